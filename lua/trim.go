package lua

import _ "embed"

// Trim is the source of trim.lua: compute a stream's safe trim point (the
// minimum over its groups of the oldest pending entry, or the last-delivered
// ID + 1) and trim below it with an exact XTRIM MINID, in one script.
//
//go:embed trim.lua
var Trim string
