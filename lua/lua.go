// Package lua holds streamtx's Lua scripts, embedded into the binary. Each
// script opens with a header naming its KEYS, ARGV and return codes; every key
// a script touches is passed in KEYS, all in one hash slot.
package lua

import _ "embed"

// Commit is the source of commit.lua: check ownership, state versions and
// publish targets, then write state, publishes, offset and XACK.
//
//go:embed commit.lua
var Commit string

// Claim is the source of claim.lua: claim pending entries and report their
// delivery counts.
//
//go:embed claim.lua
var Claim string

// DeadLetter is the source of deadletter.lua: move one entry to the
// dead-letter stream.
//
//go:embed deadletter.lua
var DeadLetter string

// Replay is the source of replay.lua: move dead letters back into their
// source stream.
//
//go:embed replay.lua
var Replay string

// DelConsumer is the source of delconsumer.lua: remove an idle consumer
// that has nothing pending.
//
//go:embed delconsumer.lua
var DelConsumer string

// Suspect is the source of suspect.lua: count an attempt at an entry handled
// alone after the processes holding it died.
//
//go:embed suspect.lua
var Suspect string
