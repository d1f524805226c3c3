-- docs/onchain.md runs: every ```lua block is a chunk of its own, run in a
-- task inside sluice (support.docs); a block marked ```lua fragment is not
-- run. The counts keep a section from losing its examples unnoticed.
require("support.docs").describe("docs/onchain.md", {})
