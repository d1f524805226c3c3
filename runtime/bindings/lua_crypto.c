/* lua_crypto.c -- sluice._crypto: HMAC, digests, hex and base64 for Lua */
#include <lauxlib.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stddef.h>
#include <string.h>

#include "host/modules.h"

/* Every function here takes and returns Lua strings; nothing is kept
 * between calls. The Lua wrapper (sluice.crypto) checks argument types and
 * reveals secrets first; these check only what they need to be safe, and
 * their errors never quote an argument (a key must not reach a message). */

/* The digests by name, fetched from OpenSSL's default provider. */
static const EVP_MD *digest_by_name(lua_State *L, int arg) {
    const char *name = luaL_checkstring(L, arg);
    const EVP_MD *md = NULL;
    if (strcmp(name, "sha256") == 0)
        md = EVP_sha256();
    else if (strcmp(name, "sha384") == 0)
        md = EVP_sha384();
    else if (strcmp(name, "sha512") == 0)
        md = EVP_sha512();
    if (md == NULL)
        luaL_argerror(L, arg, "unknown algorithm");
    return md;
}

/* hmac(alg, key, msg) -> the raw MAC */
static int l_hmac(lua_State *L) {
    const EVP_MD *md = digest_by_name(L, 1);
    size_t klen, mlen;
    const char *key = luaL_checklstring(L, 2, &klen);
    const char *msg = luaL_checklstring(L, 3, &mlen);
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int outlen = 0;
    /* key is never NULL (a Lua string, "" at least): OpenSSL 3 refuses a
     * NULL key even of length 0. */
    if (HMAC(md, key, (int)klen, (const unsigned char *)msg, mlen, out,
             &outlen) == NULL)
        return luaL_error(L, "sluice._crypto.hmac: OpenSSL failed");
    lua_pushlstring(L, (const char *)out, outlen);
    return 1;
}

/* digest(alg, msg) -> the raw digest */
static int l_digest(lua_State *L) {
    const EVP_MD *md = digest_by_name(L, 1);
    size_t mlen;
    const char *msg = luaL_checklstring(L, 2, &mlen);
    unsigned char out[EVP_MAX_MD_SIZE];
    unsigned int outlen = 0;
    if (!EVP_Digest(msg, mlen, out, &outlen, md, NULL))
        return luaL_error(L, "sluice._crypto.digest: OpenSSL failed");
    lua_pushlstring(L, (const char *)out, outlen);
    return 1;
}

/* hex_encode(s) -> lower-case hex */
static int l_hex_encode(lua_State *L) {
    static const char digits[] = "0123456789abcdef";
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i++) {
        luaL_addchar(&b, digits[s[i] >> 4]);
        luaL_addchar(&b, digits[s[i] & 15]);
    }
    luaL_pushresult(&b);
    return 1;
}

static int hex_value(int c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* hex_decode(s) -> bytes, or nil, err (either case; no spaces, even length) */
static int l_hex_decode(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    if (n % 2 != 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "hex: odd length");
        return 2;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < n; i += 2) {
        int hi = hex_value((unsigned char)s[i]);
        int lo = hex_value((unsigned char)s[i + 1]);
        if (hi < 0 || lo < 0) {
            luaL_pushresult(&b);
            lua_pushnil(L);
            lua_pushfstring(L, "hex: invalid character at position %d",
                            (int)(hi < 0 ? i + 1 : i + 2));
            return 2;
        }
        luaL_addchar(&b, (char)(hi << 4 | lo));
    }
    luaL_pushresult(&b);
    return 1;
}

static const char B64_STD[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char B64_URL[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64_encode(s, url) -> RFC 4648 base64: the standard alphabet padded
 * with '=', or (url true) the URL-safe alphabet without padding (§5, as
 * JWTs and most URL uses write it). */
static int l_base64_encode(lua_State *L) {
    size_t n;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    int url = lua_toboolean(L, 2);
    const char *a = url ? B64_URL : B64_STD;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8 | s[i + 2];
        luaL_addchar(&b, a[v >> 18]);
        luaL_addchar(&b, a[v >> 12 & 63]);
        luaL_addchar(&b, a[v >> 6 & 63]);
        luaL_addchar(&b, a[v & 63]);
    }
    if (n - i == 1) {
        unsigned v = (unsigned)s[i] << 16;
        luaL_addchar(&b, a[v >> 18]);
        luaL_addchar(&b, a[v >> 12 & 63]);
        if (!url)
            luaL_addlstring(&b, "==", 2);
    } else if (n - i == 2) {
        unsigned v = (unsigned)s[i] << 16 | (unsigned)s[i + 1] << 8;
        luaL_addchar(&b, a[v >> 18]);
        luaL_addchar(&b, a[v >> 12 & 63]);
        luaL_addchar(&b, a[v >> 6 & 63]);
        if (!url)
            luaL_addchar(&b, '=');
    }
    luaL_pushresult(&b);
    return 1;
}

static int b64_value(int c, int url) {
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == (url ? '-' : '+'))
        return 62;
    if (c == (url ? '_' : '/'))
        return 63;
    return -1;
}

static int b64_fail(lua_State *L, luaL_Buffer *b, const char *why, size_t at) {
    luaL_pushresult(b);
    lua_pushnil(L);
    if (at > 0)
        lua_pushfstring(L, "base64: %s at position %d", why, (int)at);
    else
        lua_pushfstring(L, "base64: %s", why);
    return 2;
}

/* base64_decode(s, url) -> bytes, or nil, err. Strict: only the alphabet's
 * characters, no spaces; the standard form must be padded to a multiple of
 * four, the URL-safe form may be padded or not. Bits left over in the last
 * character are ignored (RFC 4648 §3.5 lets a decoder accept them). */
static int l_base64_decode(lua_State *L) {
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    int url = lua_toboolean(L, 2);
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    size_t len = n; /* without the padding */
    while (len > 0 && s[len - 1] == '=' && n - len < 2)
        len--;
    /* padded (or the standard form): whole quanta of four characters */
    if ((n != len || !url) && n % 4 != 0)
        return b64_fail(L, &b, "length is not a multiple of 4", 0);
    if (len % 4 == 1)
        return b64_fail(L, &b, "truncated", 0);
    unsigned v = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        int c = b64_value((unsigned char)s[i], url);
        if (c < 0)
            return b64_fail(L, &b, "invalid character", i + 1);
        v = (v << 6 | (unsigned)c) & 0xffffff;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            luaL_addchar(&b, (char)(v >> bits & 0xff));
        }
    }
    luaL_pushresult(&b);
    return 1;
}

int luaopen_sluice_crypto(lua_State *L) {
    static const luaL_Reg fns[] = {
        {"hmac", l_hmac},
        {"digest", l_digest},
        {"hex_encode", l_hex_encode},
        {"hex_decode", l_hex_decode},
        {"base64_encode", l_base64_encode},
        {"base64_decode", l_base64_decode},
        {NULL, NULL},
    };
    lua_newtable(L);
    luaL_register(L, NULL, fns);
    return 1;
}
