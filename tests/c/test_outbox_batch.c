/* test_outbox_batch.c -- the outbox's chunks read into a batch and written
 * as COPY text and JSON: exact bytes */

#include "core/outbox_batch.h"
#include "core/outbox_rowbinary.h"
#include "test.h"

#include <stdlib.h>

static sl_obatch *keyed(const char *key) {
    size_t len = strlen(key);
    return sl_obatch_new(&key, &len, 1);
}

/* The batch's COPY text for columns "name:kind" ('p' plain, 'b' bytea,
 * 'j' jsonb); NULL and the error in err when it fails. Caller frees. */
static char *copy_of(sl_obatch *b, const char *const *spec, int n, char *err) {
    sl_obatch_col cols[8];
    for (int i = 0; i < n; i++) {
        const char *colon = strchr(spec[i], ':');
        cols[i].name = spec[i];
        cols[i].len = (size_t)(colon - spec[i]);
        cols[i].kind = colon[1] == 'b'   ? SL_OB_BYTEA
                       : colon[1] == 'j' ? SL_OB_JSON
                                         : SL_OB_PLAIN;
    }
    strbuf out = {0};
    if (sl_obatch_copy_text(b, cols, n, &out, err, 200) != 0) {
        sb_free(&out);
        return NULL;
    }
    return out.p ? out.p : strdup("");
}

static char *json_of(sl_obatch *b) {
    strbuf out = {0};
    CHECK_INT(sl_obatch_json(b, &out), 0);
    return out.p;
}

TEST(latest_row_of_a_key_in_the_place_of_the_first) {
    sl_obatch *b = keyed("k");
    char err[200] = "";
    CHECK_INT(sl_obatch_add(b, "[{\"k\":1,\"v\":\"a\"},{\"k\":2,\"v\":\"b\"}]",
                            33, 1, 2, 1, err, sizeof(err)),
              0);
    const char *c2 = " [ {\"k\":3} , {\"k\":1, \"v\" : \"c\"} ,{\"k\":4}] ";
    CHECK_INT(sl_obatch_add(b, c2, strlen(c2), 2, 2, 2, err, sizeof(err)), 0);
    CHECK_INT(sl_obatch_queued(b), 3);
    CHECK_INT(sl_obatch_count(b), 2);
    int e, r;
    sl_obatch_origin(b, 0, &e, &r);
    CHECK_INT(e, 2);
    CHECK_INT(r, 2);
    sl_obatch_origin(b, 1, &e, &r);
    CHECK_INT(e, 1);
    CHECK_INT(r, 2);
    char *j = json_of(b);
    CHECK_STR(j, "[{\"k\":1,\"v\":\"c\"},{\"k\":2,\"v\":\"b\"}]");
    free(j);
    sl_obatch_free(b);
}

TEST(keys_compare_by_value_and_type) {
    /* the same string escaped two ways is one key; a string "1" and the
     * number 1 are two; an absent key field is a key of its own */
    sl_obatch *b = keyed("k");
    const char *c = "[{\"k\":\"\\u00e9/\"},{\"k\":\"\xc3\xa9\\/\",\"v\":1},"
                    "{\"k\":\"1\"},{\"k\":1},{\"v\":2},{\"v\":3}]";
    char err[200] = "";
    CHECK_INT(sl_obatch_add(b, c, strlen(c), 1, 6, 1, err, sizeof(err)), 0);
    CHECK_INT(sl_obatch_count(b), 4);
    char *j = json_of(b);
    CHECK_STR(j, "[{\"k\":\"\xc3\xa9\\/\",\"v\":1},{\"k\":\"1\"},{\"k\":1},"
                 "{\"v\":3}]");
    free(j);
    sl_obatch_free(b);
}

TEST(no_key_keeps_every_row) {
    sl_obatch *b = sl_obatch_new(NULL, NULL, 0);
    char err[200] = "";
    const char *c = "[{\"a\":1},{\"a\":1},{}]";
    CHECK_INT(sl_obatch_add(b, c, strlen(c), 1, 3, 7, err, sizeof(err)), 0);
    CHECK_INT(sl_obatch_count(b), 3);
    char *j = json_of(b);
    CHECK_STR(j, "[{\"a\":1},{\"a\":1},{}]");
    free(j);
    sl_obatch_free(b);
}

TEST(copy_text_of_each_kind) {
    sl_obatch *b = keyed("id");
    const char *c =
        "[{\"b\":\"AB\\u0001\\\\\",\"id\":1,\"j\":{\"x\":\"t\\tq\\\"\","
        "\"n\":[1,2.5e-3,true,null]},\"n\":-1.25e+300,"
        "\"s\":\"tab\\tnl\\ncr\\rbs\\\\q\\\"sl\\/u\\u00e9\\ud83d\\ude00\","
        "\"x\":\"not a column\"},"
        "{\"id\":2,\"j\":\"str\",\"n\":123456789012345678901234567890,"
        "\"s\":\"\"},"
        "{\"id\":3,\"j\":null,\"s\":null,\"b\":[1],\"n\":true}]";
    char err[200] = "";
    CHECK_INT(sl_obatch_add(b, c, strlen(c), 1, 3, 1, err, sizeof(err)), 0);
    CHECK_STR(err, "");
    const char *cols[] = {"id:p", "s:p", "n:p", "b:b", "j:j"};
    char *t = copy_of(b, cols, 5, err);
    CHECK_STR(t, "1\ttab\\tnl\\ncr\\rbs\\\\q\"sl/u\xc3\xa9\xf0\x9f\x98\x80\t"
                 "-1.25e+300\t\\\\x4142015c\t"
                 "{\"x\":\"t\\\\tq\\\\\"\",\"n\":[1,2.5e-3,true,null]}\n"
                 "2\t\t123456789012345678901234567890\t\\N\t\"str\"\n"
                 "3\t\\N\ttrue\t[1]\t\\N\n");
    free(t);
    sl_obatch_free(b);
}

TEST(copy_text_refuses_what_postgres_cannot_hold) {
    char err[200] = "";
    const char *cols[] = {"s:p"};
    sl_obatch *b = keyed("s");
    const char *nul = "[{\"s\":\"a\\u0000b\"}]";
    CHECK_INT(sl_obatch_add(b, nul, strlen(nul), 1, 1, 1, err, sizeof(err)), 0);
    CHECK(copy_of(b, cols, 1, err) == NULL);
    CHECK_STR(err, "row 1 column s: a NUL character (PostgreSQL text cannot "
                   "hold one)");
    sl_obatch_free(b);
    /* a lone surrogate: not in a key (a bad key refuses the row earlier) */
    b = sl_obatch_new(NULL, NULL, 0);
    const char *lone = "[{\"s\":\"\\ud83d x\"}]";
    CHECK_INT(sl_obatch_add(b, lone, strlen(lone), 1, 1, 1, err, sizeof(err)),
              0);
    CHECK(copy_of(b, cols, 1, err) == NULL);
    CHECK_STR(err, "row 1 column s: a bad \\u escape");
    sl_obatch_free(b);
}

TEST(malformed_chunks_are_errors) {
    static const struct {
        const char *text;
        int lo, hi;
        const char *err;
    } cases[] = {
        {"{\"a\":1}", 1, 1, "not a JSON array"},
        {"[]", 1, 1, "0 rows, row 1 asked for"},
        {"[{\"a\":1},{\"a\":2}]", 1, 3, "2 rows, row 3 asked for"},
        {"[{\"a\":1},2]", 1, 2, "row 2: not a JSON object of fields"},
        {"[{\"a\":1} {\"a\":2}]", 1, 2, "row 1: not followed by , or ]"},
        {"[{\"a\":tru}]", 1, 1, "row 1: not a JSON object of fields"},
        {"[{\"a\":\"open}]", 1, 1, "row 1: not a JSON object of fields"},
        {"[{\"a\":[1,{]}]", 1, 1, "row 1: not a JSON object of fields"},
        {"[{\"k\":\"\\x\"}]", 1, 1, "row 1: a bad key (or out of memory)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sl_obatch *b = keyed("k");
        char err[200] = "";
        CHECK_INT(sl_obatch_add(b, cases[i].text, strlen(cases[i].text),
                                cases[i].lo, cases[i].hi, 1, err, sizeof(err)),
                  -1);
        CHECK_STR(err, cases[i].err);
        sl_obatch_free(b);
    }
}

TEST(names_with_escapes_are_their_characters) {
    /* "\u0061" is the column a; a name with a quote is written back escaped */
    sl_obatch *b = keyed("a");
    char err[200] = "";
    const char *c = "[{\"\\u0061\":1,\"q\\\"\":2},{\"a\":1,\"b\":3}]";
    CHECK_INT(sl_obatch_add(b, c, strlen(c), 1, 2, 1, err, sizeof(err)), 0);
    CHECK_INT(sl_obatch_count(b), 1);
    char *j = json_of(b);
    CHECK_STR(j, "[{\"a\":1,\"b\":3}]");
    free(j);
    sl_obatch_free(b);
    b = sl_obatch_new(NULL, NULL, 0);
    CHECK_INT(sl_obatch_add(b, c, strlen(c), 1, 1, 1, err, sizeof(err)), 0);
    j = json_of(b);
    CHECK_STR(j, "[{\"a\":1,\"q\\u0022\":2}]");
    free(j);
    const char *cols[] = {"a:p", "q\":p"};
    char *t = copy_of(b, cols, 2, err);
    CHECK_STR(t, "1\t2\n");
    free(t);
    sl_obatch_free(b);
}

TEST(rows_before_lo_are_skipped_whatever_they_hold) {
    sl_obatch *b = keyed("k");
    char err[200] = "";
    const char *c = "[[1,{\"x\":\"]\"}],\"s\",{\"k\":5}]";
    CHECK_INT(sl_obatch_add(b, c, strlen(c), 3, 3, 1, err, sizeof(err)), 0);
    CHECK_INT(sl_obatch_count(b), 1);
    int e, r;
    sl_obatch_origin(b, 0, &e, &r);
    CHECK_INT(r, 3);
    sl_obatch_free(b);
}

TEST(many_keys_grow_the_table) {
    sl_obatch *b = keyed("k");
    strbuf c = {0};
    sb_add(&c, "[", 1);
    for (int i = 0; i < 5000; i++) {
        char row[40];
        int n =
            snprintf(row, sizeof(row), "%s{\"k\":%d}", i ? "," : "", i % 3000);
        sb_add(&c, row, (size_t)n);
    }
    sb_add(&c, "]", 1);
    char err[200] = "";
    CHECK_INT(sl_obatch_add(b, c.p, c.len, 1, 5000, 1, err, sizeof(err)), 0);
    CHECK_INT(sl_obatch_queued(b), 5000);
    CHECK_INT(sl_obatch_count(b), 3000);
    int e, r;
    sl_obatch_origin(b, 0, &e, &r);
    CHECK_INT(r, 3001); /* key 0's latest row */
    sl_obatch_origin(b, 2999, &e, &r);
    CHECK_INT(r, 3000); /* key 2999: once */
    sb_free(&c);
    sl_obatch_free(b);
}

/* The batch's RowBinary as lowercase hex ("" on error, err set). */
static char *rowbinary_hex(sl_obatch *b, const sl_rb_col *cols, int n,
                           const uint64_t *versions, uint64_t version,
                           char *err) {
    strbuf out = {0};
    if (sl_obatch_rowbinary(b, cols, n, versions, version, &out, err, 200) !=
        0) {
        sb_free(&out);
        return strdup("");
    }
    char *hex = calloc(out.len * 2 + 1, 1);
    for (size_t i = 0; i < out.len; i++)
        snprintf(hex + 2 * i, 3, "%02x", (unsigned char)out.p[i]);
    sb_free(&out);
    return hex;
}

TEST(rowbinary_of_each_type) {
    sl_obatch *b = keyed("i");
    char err[200] = "";
    const char *c =
        "[{\"i\":-2,\"r\":0.1,\"s\":\"a\\u00e9\",\"j\":{\"k\":[1]},\"o\":true,"
        "\"u\":\"258\",\"d\":\"-1.5\",\"x\":\"ignored\"},"
        "{\"i\":1e+3,\"r\":-0,\"s\":12,\"j\":\"q\",\"o\":1,\"u\":1,"
        "\"d\":\"0.000\"},{\"i\":3,\"r\":2}]";
    CHECK_INT(sl_obatch_add(b, c, strlen(c), 1, 3, 1, err, sizeof(err)), 0);
    sl_rb_col cols[] = {
        {"i", 1, SL_RB_INT64, 0, 0, 0},   {"r", 1, SL_RB_FLOAT64, 0, 0, 0},
        {"s", 1, SL_RB_STRING, 1, 0, 0},  {"j", 1, SL_RB_JSON, 1, 0, 0},
        {"o", 1, SL_RB_UINT8, 1, 0, 0},   {"u", 1, SL_RB_UINT256, 1, 0, 0},
        {"d", 1, SL_RB_DECIMAL, 1, 9, 2},
    };
    uint64_t versions[] = {7, 0, 9};
    char *hex = rowbinary_hex(b, cols, 7, versions, 0x0102, err);
    CHECK_STR(err, "");
    CHECK_STR(hex,
              /* row 1 */
              "feffffffffffffff"
              "9a9999999999b93f"
              "0003"
              "61c3a9"
              "0009"
              "7b226b223a5b315d7d"
              "0001"
              "00"
              "0201000000000000000000000000000000000000000000000000000000000000"
              "00"
              "6affffff"
              "0700000000000000"
              /* row 2 */
              "e803000000000000"
              "0000000000000080"
              "0002"
              "3132"
              "0003"
              "227122"
              "0001"
              "00"
              "0100000000000000000000000000000000000000000000000000000000000000"
              "00"
              "00000000"
              "0201000000000000"
              /* row 3: absent columns are nulls */
              "0300000000000000"
              "0000000000000040"
              "01"
              "01"
              "01"
              "01"
              "01"
              "0900000000000000");
    free(hex);
    sl_obatch_free(b);
}

TEST(rowbinary_refuses_with_the_sinks_messages) {
    static const struct {
        const char *row;
        sl_rb_col col;
        const char *err;
    } cases[] = {
        {"{\"v\":\"1.005\"}",
         {"v", 1, SL_RB_DECIMAL, 0, 18, 2},
         "row 1 column v: 1.005 has more than 2 decimals (Decimal(18, 2))"},
        {"{\"v\":\"-12345678901234567.5\"}",
         {"v", 1, SL_RB_DECIMAL, 0, 18, 2},
         "row 1 column v: -12345678901234567.5 has more than 16 integral "
         "digits (Decimal(18, 2))"},
        {"{\"v\":\"1e5\"}",
         {"v", 1, SL_RB_DECIMAL, 0, 18, 2},
         "row 1 column v: '1e5' is not a plain decimal (Decimal(18, 2))"},
        {"{\"v\":\".5\"}",
         {"v", 1, SL_RB_DECIMAL, 0, 18, 2},
         "row 1 column v: '.5' is not a plain decimal (Decimal(18, 2))"},
        {"{\"v\":true}",
         {"v", 1, SL_RB_DECIMAL, 0, 18, 2},
         "row 1 column v: decimal expected"},
        {"{\"w\":1}",
         {"v", 1, SL_RB_INT64, 0, 0, 0},
         "row 1 column v: null in a column that is not Nullable"},
        {"{\"v\":null}",
         {"v", 1, SL_RB_STRING, 0, 0, 0},
         "row 1 column v: null in a column that is not Nullable"},
        {"{\"v\":2.5}",
         {"v", 1, SL_RB_INT64, 0, 0, 0},
         "row 1 column v: integer expected"},
        {"{\"v\":\"7\"}",
         {"v", 1, SL_RB_INT64, 0, 0, 0},
         "row 1 column v: integer expected"},
        {"{\"v\":\"x\"}",
         {"v", 1, SL_RB_FLOAT64, 0, 0, 0},
         "row 1 column v: real expected"},
        {"{\"v\":\"-1\"}",
         {"v", 1, SL_RB_UINT256, 0, 0, 0},
         "row 1 column v: uint256 expected"},
        {"{\"v\":"
         "\"1157920892373161954235709850086879078532699846656405640394575840079"
         "13129639936\"}",
         {"v", 1, SL_RB_UINT256, 0, 0, 0},
         "row 1 column v: "
         "115792089237316195423570985008687907853269984665640564039457584007913"
         "129639936 is beyond 2^256-1"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        sl_obatch *b = sl_obatch_new(NULL, NULL, 0);
        char text[200], err[200] = "";
        snprintf(text, sizeof(text), "[%s]", cases[i].row);
        CHECK_INT(sl_obatch_add(b, text, strlen(text), 1, 1, 1, err, 200), 0);
        char *hex = rowbinary_hex(b, &cases[i].col, 1, NULL, 1, err);
        CHECK_STR(hex, "");
        CHECK_STR(err, cases[i].err);
        free(hex);
        sl_obatch_free(b);
    }
}

TEST(rowbinary_decimals_and_big_integers_exactly) {
    sl_obatch *b = sl_obatch_new(NULL, NULL, 0);
    char err[200] = "";
    /* 2^256-1; Decimal(38, 8) of -0.00000001 (16 bytes of -1); of
     * 00012.50 (1250000000 = 0x4a817c80); Decimal(76, 0) of -0 (zero) */
    const char *c = "[{\"u\":"
                    "\"11579208923731619542357098500868790785326998466564056403"
                    "9457584007913129639935\","
                    "\"a\":\"-0.00000001\",\"b\":\"00012.50\",\"z\":\"-0\"}]";
    CHECK_INT(sl_obatch_add(b, c, strlen(c), 1, 1, 1, err, sizeof(err)), 0);
    sl_rb_col cols[] = {
        {"u", 1, SL_RB_UINT256, 0, 0, 0},
        {"a", 1, SL_RB_DECIMAL, 0, 38, 8},
        {"b", 1, SL_RB_DECIMAL, 0, 38, 8},
        {"z", 1, SL_RB_DECIMAL, 0, 76, 0},
    };
    char *hex = rowbinary_hex(b, cols, 4, NULL, 0, err);
    CHECK_STR(err, "");
    CHECK_STR(hex,
              "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff"
              "ffffffffffffffffffffffffffffffff"
              "807c814a000000000000000000000000"
              "0000000000000000000000000000000000000000000000000000000000000000"
              "0000000000000000");
    free(hex);
    sl_obatch_free(b);
}

int main(void) {
    RUN(latest_row_of_a_key_in_the_place_of_the_first);
    RUN(keys_compare_by_value_and_type);
    RUN(no_key_keeps_every_row);
    RUN(copy_text_of_each_kind);
    RUN(copy_text_refuses_what_postgres_cannot_hold);
    RUN(malformed_chunks_are_errors);
    RUN(names_with_escapes_are_their_characters);
    RUN(rows_before_lo_are_skipped_whatever_they_hold);
    RUN(many_keys_grow_the_table);
    RUN(rowbinary_of_each_type);
    RUN(rowbinary_refuses_with_the_sinks_messages);
    RUN(rowbinary_decimals_and_big_integers_exactly);
    return TEST_SUMMARY();
}
