/* lua_crypto.c -- sluice._crypto: HMAC, digests, hex and base64 for Lua */
#include <ctype.h>
#include <lauxlib.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stddef.h>
#include <stdlib.h>
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

/* The codecs are OpenSSL's (OPENSSL_buf2hexstr_ex, OPENSSL_hexstr2buf_ex,
 * EVP_EncodeBlock, EVP_DecodeBlock); what is added here is strictness
 * they lack (EVP_DecodeBlock skips spaces and counts padding as bytes) and
 * errors that say where the input went wrong. */

static const char HEX_DIGITS[] = "0123456789abcdefABCDEF";

/* hex_encode(s) -> lower-case hex */
static int l_hex_encode(lua_State *L) {
    size_t n, len = 0;
    const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
    if (n == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    char *out = malloc(2 * n + 1);
    if (!out || !OPENSSL_buf2hexstr_ex(out, 2 * n + 1, &len, s, n, '\0')) {
        free(out);
        return luaL_error(L, "sluice._crypto.hex_encode: out of memory");
    }
    len = strlen(out); /* the length it reports counts the NUL */
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)out[i]);
    lua_pushlstring(L, out, len);
    free(out);
    return 1;
}

/* hex_decode(s) -> bytes, or nil, err (either case; no spaces, even length) */
static int l_hex_decode(lua_State *L) {
    size_t n, len = 0;
    const char *s = luaL_checklstring(L, 1, &n);
    if (n % 2 != 0) {
        lua_pushnil(L);
        lua_pushliteral(L, "hex: odd length");
        return 2;
    }
    size_t ok = strspn(s, HEX_DIGITS);
    if (ok < n) {
        lua_pushnil(L);
        lua_pushfstring(L, "hex: invalid character at position %d",
                        (int)ok + 1);
        return 2;
    }
    if (n == 0) {
        lua_pushliteral(L, "");
        return 1;
    }
    unsigned char *out = malloc(n / 2);
    if (!out || !OPENSSL_hexstr2buf_ex(out, n / 2, &len, s, '\0')) {
        free(out);
        return luaL_error(L, "sluice._crypto.hex_decode: out of memory");
    }
    lua_pushlstring(L, (const char *)out, len);
    free(out);
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
    if (n > (size_t)INT_MAX / 4 * 3 - 3)
        return luaL_error(L, "sluice._crypto.base64_encode: input too long");
    unsigned char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (!out)
        return luaL_error(L, "sluice._crypto.base64_encode: out of memory");
    int len = EVP_EncodeBlock(out, s, (int)n);
    if (url) {
        while (len > 0 && out[len - 1] == '=')
            len--;
        for (int i = 0; i < len; i++)
            out[i] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
    }
    lua_pushlstring(L, (const char *)out, (size_t)len);
    free(out);
    return 1;
}

static int b64_fail(lua_State *L, const char *why, size_t at) {
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
    size_t len = n; /* without the padding */
    while (len > 0 && s[len - 1] == '=' && n - len < 2)
        len--;
    /* padded (or the standard form): whole quanta of four characters */
    if ((n != len || !url) && n % 4 != 0)
        return b64_fail(L, "length is not a multiple of 4", 0);
    if (len % 4 == 1)
        return b64_fail(L, "truncated", 0);
    const char *alphabet = url ? B64_URL : B64_STD;
    for (size_t i = 0; i < len; i++)
        if (s[i] == '\0' || !strchr(alphabet, s[i]))
            return b64_fail(L, "invalid character", i + 1);
    if (len > (size_t)INT_MAX - 4)
        return b64_fail(L, "input too long", 0);
    /* EVP_DecodeBlock wants the standard alphabet in padded quanta */
    size_t padded = (len + 3) / 4 * 4;
    unsigned char *in = malloc(padded + 1), *out = malloc(padded / 4 * 3 + 1);
    if (!in || !out) {
        free(in);
        free(out);
        return luaL_error(L, "sluice._crypto.base64_decode: out of memory");
    }
    for (size_t i = 0; i < len; i++)
        in[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : (unsigned char)s[i];
    memset(in + len, '=', padded - len);
    int got = EVP_DecodeBlock(out, in, (int)padded);
    free(in);
    if (got < 0) {
        free(out);
        return b64_fail(L, "invalid input", 0);
    }
    /* EVP_DecodeBlock counts each '=' as a zero byte */
    lua_pushlstring(L, (const char *)out, (size_t)got - (padded - len));
    free(out);
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
