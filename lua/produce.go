package lua

import _ "embed"

// Produce is the source of produce.lua: append one entry to a stream unless
// its idempotency key was published within the window, checking and
// appending in one script.
//
//go:embed produce.lua
var Produce string
