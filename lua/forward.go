package lua

import _ "embed"

// Forward is the source of forward.lua: append an outbox entry to its
// target stream at most once.
//
//go:embed forward.lua
var Forward string
