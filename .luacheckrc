-- luacheck configuration: `luacheck .` (ctest runs it as lua_luacheck)
std = "luajit"
-- `not (x > y)` is how the code rejects NaN along with small values
ignore = { "581" }
max_line_length = 120
exclude_files = { "build/**", "build-*/**" }
-- specs assert on long literal strings
files["tests/lua/**/*_spec.lua"] = { std = "+busted", max_line_length = false }
-- recorded exchange error messages, kept verbatim
files["lua/sluice/mock/binance.lua"] = { max_line_length = false }
