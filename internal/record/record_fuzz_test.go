package record_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/state"
)

// FuzzParseRecord: the bytes of a state record come from Redis. Parsing
// never panics, refuses with state.ErrCorrupt, and what it accepts formats
// back to a record that parses the same.
func FuzzParseRecord(f *testing.F) {
	f.Add("1 t 1-0\n\x81\xa1N\x01")
	f.Add("7 0123abcd 99-7\n")
	f.Add("7  \n")
	f.Add("")
	f.Add("\n")
	f.Add("1 t")
	f.Add("1 t 1-0")
	f.Add("0 t 1-0\nd")
	f.Add("-1 t 1-0\nd")
	f.Add("+1 t 1-0\nd")
	f.Add("9223372036854775808 t 1-0\nd")
	f.Add("1.0 t 1-0\nd")
	f.Add(" 1 t 1-0\nd")
	f.Add("1 t 1 0\nd\n\n")
	f.Fuzz(func(t *testing.T, v string) {
		rec, err := record.Parse("k", v)
		if err != nil {
			if !errors.Is(err, state.ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if rec.Version < 1 || !record.ValidToken(rec.Token) {
			t.Fatalf("accepted version %d, token %q", rec.Version, rec.Token)
		}
		again, err := record.Parse("k", string(record.Format(rec.Version, rec.Token, rec.LastID, rec.Data)))
		if err != nil {
			t.Fatalf("formatted record does not parse: %v", err)
		}
		if again.Version != rec.Version || again.Token != rec.Token || again.LastID != rec.LastID || string(again.Data) != string(rec.Data) {
			t.Fatalf("round trip: %+v != %+v", again, rec)
		}
		if p := record.Prefix(rec.Version, rec.Token); !strings.HasPrefix(v, p) {
			t.Fatalf("prefix %q is not the start of the record %q", p, v)
		}
	})
}
