package keys

import (
	"errors"
	"fmt"
	"strings"
)

// Idempotency returns the key of the dedupe record of an idempotent publish
// of key to stream: "stx:{tag}:<stream>::idem:<key>", in the stream's hash
// slot, with the stream and key escaped like every other component.
//
// The record takes the place of a Space's group with an empty name, which no
// consumer group can have, so it never collides with a key of any (stream,
// group) Space — not even of a group called "idem".
func Idempotency(stream, key string) (string, error) {
	if stream == "" || key == "" {
		return "", errors.New("keys: empty stream or idempotency key")
	}
	tag := Tag(stream)
	if strings.ContainsRune(tag, '}') {
		return "", fmt.Errorf("keys: stream %q: %w", stream, ErrNoTag)
	}
	return Prefix + "{" + tag + "}:" + escape(stream) + "::idem:" + escape(key), nil
}
