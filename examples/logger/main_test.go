package main

import (
	"testing"

	"github.com/streamtx/streamtx/streamtxtest"
)

// The logger prints (at least once per entry, a side effect the check cannot
// see) and leaves nothing in Redis but the acknowledgement.
func TestHandlerIsReplaySafe(t *testing.T) {
	t.Parallel()
	streamtxtest.CheckReplaySafe(t, newHandler, []map[string]any{
		{"user": "ada", "action": "signed_up"},
		{"user": "ada", "action": "logged_in"},
		{"user": "alan", "action": "signed_up"},
	}, streamtxtest.ReplayOptions{})
}
