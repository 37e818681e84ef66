package apicheck

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite api/streamtx.txt from the code")

const (
	apiFile = "../../api/streamtx.txt"
	header  = "# The exported API of github.com/streamtx/streamtx, one sorted line per item.\n" +
		"# Checked by go test ./internal/apicheck; after a deliberate change, regenerate:\n" +
		"#   go test ./internal/apicheck -update\n"
)

// TestAPI fails when the exported API differs from api/streamtx.txt.
func TestAPI(t *testing.T) {
	got, err := List("../..")
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.MkdirAll(filepath.Dir(apiFile), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(apiFile, []byte(header+strings.Join(got, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d lines)", apiFile, len(got))
		return
	}
	b, err := os.ReadFile(apiFile)
	if err != nil {
		t.Fatalf("%v\nto create it: go test ./internal/apicheck -update", err)
	}
	var want []string
	for line := range strings.Lines(string(b)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			want = append(want, line)
		}
	}
	if d := diff(want, got); d != "" {
		t.Errorf("the exported API differs from api/streamtx.txt (- in the file, + in the code):\n%s\n"+
			"if the change is deliberate: go test ./internal/apicheck -update, and commit api/streamtx.txt", d)
	}
}

// diff lists the lines only in want (-) and only in got (+), in sorted
// order; both are sets of lines.
func diff(want, got []string) string {
	var b strings.Builder
	for _, l := range want {
		if !slices.Contains(got, l) {
			b.WriteString("-" + l + "\n")
		}
	}
	for _, l := range got {
		if !slices.Contains(want, l) {
			b.WriteString("+" + l + "\n")
		}
	}
	return b.String()
}

// TestList checks the listing of a small module (testdata/mod): package p
// with funcs, methods (promoted ones too), generic types and functions,
// aliases, embedded fields, an interface with embedded and unexported
// methods; and what is left out: unexported items, package internal, main
// packages, _test.go files.
func TestList(t *testing.T) {
	got, err := List("testdata/mod")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`pkg example.com/mod/p, const KindA Kind = 1`,
		`pkg example.com/mod/p, const KindB Kind = 2`,
		`pkg example.com/mod/p, const Name = "p"`,
		`pkg example.com/mod/p, func F(context.Context, int, ...string) (int, error)`,
		`pkg example.com/mod/p, func Map[S ~[]E, E any](S, func(E) E) S`,
		`pkg example.com/mod/p, func Sum[N Number](...N) N`,
		`pkg example.com/mod/p, method (*T) Run(context.Context) error`,
		`pkg example.com/mod/p, method (Base) Hello() string`,
		`pkg example.com/mod/p, method (Pair[K, V]) Swap() Pair[K, V]`,
		`pkg example.com/mod/p, method (T) Hello() string`,
		`pkg example.com/mod/p, method (T) Promoted()`,
		`pkg example.com/mod/p, method (T) String() string`,
		`pkg example.com/mod/p, type Alias = Base`,
		`pkg example.com/mod/p, type Base struct`,
		`pkg example.com/mod/p, type Base struct, ID string`,
		`pkg example.com/mod/p, type GenericAlias[V any] = Pair[string, V]`,
		`pkg example.com/mod/p, type Handler interface`,
		`pkg example.com/mod/p, type Handler interface, Handle(context.Context) error`,
		`pkg example.com/mod/p, type Handler interface, Read([]byte) (int, error)`,
		`pkg example.com/mod/p, type Handler interface, unexported methods`,
		`pkg example.com/mod/p, type Kind int`,
		`pkg example.com/mod/p, type Number interface{~int | ~float64}`,
		`pkg example.com/mod/p, type Pair[K comparable, V any] struct`,
		`pkg example.com/mod/p, type Pair[K comparable, V any] struct, Key K`,
		`pkg example.com/mod/p, type Pair[K comparable, V any] struct, Val V`,
		`pkg example.com/mod/p, type T struct`,
		`pkg example.com/mod/p, type T struct, H hidden.H`,
		`pkg example.com/mod/p, type T struct, Name string`,
		`pkg example.com/mod/p, type T struct, OnDone func(error) bool`,
		`pkg example.com/mod/p, type T struct, embedded Base`,
		`pkg example.com/mod/p, var ErrX error`,
		`pkg example.com/mod/sub, var V []map[string]*int`,
	}
	if d := diff(want, got); d != "" {
		t.Errorf("listing of testdata/mod (- expected, + got):\n%s", d)
	}
	if !slices.IsSorted(got) {
		t.Error("listing is not sorted")
	}
}

func TestDiff(t *testing.T) {
	got := diff([]string{"a", "b", "c"}, []string{"a", "c", "d"})
	if want := "-b\n+d\n"; got != want {
		t.Errorf("diff = %q, want %q", got, want)
	}
}
