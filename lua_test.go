package streamtx_test

import (
	"os"
	"path/filepath"
	"testing"
)

// luaSource returns the source of one of lua/'s scripts, as the root package
// embeds it: tests compute EVALSHA hashes from it (the sources are not API).
func luaSource(t testing.TB, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("lua", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
