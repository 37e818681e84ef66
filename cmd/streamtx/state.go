package main

import (
	"context"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/statejson"
)

const stateHelp = `Prints the committed state record NAME of GROUP on STREAM (with KEY, the
record of that entity key of Keyed state) as JSON: its Redis key, version
(commits that wrote it), the ID of the last entry applied, and its value.

The value is msgpack decoded without the Go type: maps become JSON objects
(non-string keys are printed as strings), binary data that is valid UTF-8
becomes a string and other binary data {"$base64": "..."}, floats that JSON
cannot hold (NaN, ±Inf) strings, timestamps RFC 3339 strings, and other
msgpack extensions {"$ext": type, "$base64": "..."}.

Exit status 1 if the record does not exist or does not decode.
`

func runState(ctx context.Context, c *cli, args []string) error {
	if len(args) == 0 {
		return usagef("state: missing subcommand: get")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(c.stdout, "Usage: streamtx state get STREAM GROUP NAME [KEY]\n\n"+stateHelp)
		return errHelp
	case "get":
	default:
		return usagef("state: unknown subcommand %q: want get", args[0])
	}
	f := c.newFlags("state get STREAM GROUP NAME [KEY]", stateHelp)
	pos, err := f.parse(args[1:], 3, 4)
	if err != nil {
		return err
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	var snap streamtx.Snapshot[msgpack.RawMessage]
	if len(pos) == 4 {
		snap, err = streamtx.ReadKeyedState[msgpack.RawMessage](ctx, rdb, pos[0], pos[1], pos[2], pos[3])
	} else {
		snap, err = streamtx.ReadState[msgpack.RawMessage](ctx, rdb, pos[0], pos[1], pos[2])
	}
	if err != nil {
		return err
	}
	if snap.Version == 0 {
		return fmt.Errorf("%w: no state record %q", errNotFound, snap.Key)
	}
	value, err := statejson.Decode(snap.Value)
	if err != nil {
		return fmt.Errorf("state record %q (version %d): %w", snap.Key, snap.Version, err)
	}
	return writeJSON(c.stdout, struct {
		Key     string `json:"key"`
		Version int64  `json:"version"`
		LastID  string `json:"last_id"`
		Value   any    `json:"value"`
	}{snap.Key, snap.Version, snap.LastID, value})
}
