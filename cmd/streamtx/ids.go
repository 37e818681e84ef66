package main

import (
	"strconv"
	"strings"
)

// parseID splits a stream ID "ms-seq" (or "ms") into its parts.
func parseID(id string) (ms, seq uint64, ok bool) {
	m, s, hasSeq := strings.Cut(id, "-")
	var err1, err2 error
	ms, err1 = strconv.ParseUint(m, 10, 64)
	if hasSeq {
		seq, err2 = strconv.ParseUint(s, 10, 64)
	}
	return ms, seq, err1 == nil && err2 == nil
}

func validID(id string) bool {
	_, _, ok := parseID(id)
	return ok
}

// idLess reports whether stream ID a sorts before b. Malformed IDs sort
// first.
func idLess(a, b string) bool {
	am, as, aok := parseID(a)
	bm, bs, bok := parseID(b)
	if !aok || !bok {
		return !aok && bok
	}
	if am != bm {
		return am < bm
	}
	return as < bs
}

// nextID returns the smallest stream ID above id (id itself when it is the
// largest possible ID or does not parse).
func nextID(id string) string {
	ms, seq, ok := parseID(id)
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
