// Package streamid parses, orders and steps Redis stream entry IDs
// ("ms-seq", or "ms" alone). IDs come from Redis and from users: malformed
// ones are reported, never a panic.
package streamid

import (
	"strconv"
	"strings"
)

// Parse splits id into its millisecond and sequence parts.
func Parse(id string) (ms, seq uint64, ok bool) {
	m, s, hasSeq := strings.Cut(id, "-")
	var err1, err2 error
	ms, err1 = strconv.ParseUint(m, 10, 64)
	if hasSeq {
		seq, err2 = strconv.ParseUint(s, 10, 64)
	}
	return ms, seq, err1 == nil && err2 == nil
}

// Valid reports whether id parses.
func Valid(id string) bool {
	_, _, ok := Parse(id)
	return ok
}

// Less reports whether a sorts before b. Malformed IDs sort first.
func Less(a, b string) bool {
	am, as, aok := Parse(a)
	bm, bs, bok := Parse(b)
	if !aok || !bok {
		return !aok && bok
	}
	if am != bm {
		return am < bm
	}
	return as < bs
}

// Next returns the smallest ID above id (id itself when it is the largest
// possible ID or does not parse).
func Next(id string) string {
	ms, seq, ok := Parse(id)
	switch {
	case !ok:
		return id
	case seq < ^uint64(0):
		return strconv.FormatUint(ms, 10) + "-" + strconv.FormatUint(seq+1, 10)
	case ms < ^uint64(0):
		return strconv.FormatUint(ms+1, 10) + "-0"
	}
	return id
}
