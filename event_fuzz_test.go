package streamtx_test

import (
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/streamtx/streamtx"
)

// evFuzzPayload is a payload of the shapes events carry, without floats (NaN
// would defeat the round-trip comparison).
type evFuzzPayload struct {
	ID     int64
	Name   string `msgpack:"name" json:"name"`
	Tags   []string
	Counts map[string]int
	Next   *evFuzzPayload
	Raw    []byte
	Lines  []evLine
}

// FuzzDecode feeds Decode arbitrary field maps: each envelope field present
// or not (mask) with arbitrary contents, plus one arbitrary extra field. It
// checks that Decode never panics, that every error is Permanent and wraps
// one of the envelope sentinels, and that whatever decodes survives a round
// trip through Fields.
func FuzzDecode(f *testing.F) {
	seed := func(e streamtx.Envelope[evFuzzPayload]) {
		fields, err := e.Fields()
		if err != nil {
			f.Fatal(err)
		}
		v := evValues(f, fields)
		f.Add(v["id"], v["type"], v["source"], v["subject"], v["time"], v["schemaversion"],
			v["correlationid"], v["datacontenttype"], []byte(v["data"]), uint16(0xffff), "x", "y")
	}
	p := evFuzzPayload{ID: 7, Name: "n", Tags: []string{"a"}, Counts: map[string]int{"c": 1},
		Next: &evFuzzPayload{Raw: []byte{1, 2}}, Lines: []evLine{{"S", 1}}}
	seed(streamtx.Envelope[evFuzzPayload]{ID: "1", Type: "t", Source: "s", Data: p})
	seed(streamtx.Envelope[evFuzzPayload]{ID: "1", Type: "t", Source: "s", Subject: "x", CorrelationID: "c",
		Time: time.Unix(1700000000, 5).UTC(), DataContentType: streamtx.ContentTypeJSON, Data: p})
	f.Add("1", "t", "s", "", "0000-01-01T00:00:00+01:00", "1", "", "application/msgpack", []byte("\x80"), uint16(0xffff), "", "")
	f.Add("1", "t", "s", "", "", "2", "", "application/json", []byte(`{"name":1}`), uint16(0xffff), "", "")
	f.Add("1", "t", "s", "", "", "1", "", "", []byte("\xdf\xff\xff\xff\xff"), uint16(0xffff), "", "")
	f.Add("1", "t", "s", "", "", "1", "", "", []byte("\x91\x91\x91\x91\x91\x91\x91\x91"), uint16(0xffff), "", "")
	f.Add("", "", "", "", "", "", "", "", []byte{}, uint16(0), "data", "\xc0")

	f.Fuzz(func(t *testing.T, id, typ, source, subject, tm, version, corr, ct string, data []byte, mask uint16, extraK, extraV string) {
		values := map[string]string{}
		for i, kv := range [][2]string{
			{"id", id}, {"type", typ}, {"source", source}, {"subject", subject}, {"time", tm},
			{"schemaversion", version}, {"correlationid", corr}, {"datacontenttype", ct}, {"data", string(data)},
		} {
			if mask&(1<<i) != 0 {
				values[kv[0]] = kv[1]
			}
		}
		if mask&(1<<15) != 0 {
			values[extraK] = extraV
		}
		msg := &streamtx.Message{Stream: "s", ID: "1-1", Values: values}

		evCheckDecode[evFuzzPayload](t, msg, true)
		evCheckDecode[map[string]any](t, msg, false)
		evCheckDecode[[]int](t, msg, true)
		evCheckDecode[string](t, msg, true)
		evCheckDecode[*evLine](t, msg, true, streamtx.AcceptVersions(1, 2, -1, 0))
	})
}

func evCheckDecode[T any](t *testing.T, msg *streamtx.Message, roundTrip bool, opts ...streamtx.DecodeOption) {
	t.Helper()
	e, err := streamtx.Decode[T](msg, opts...)
	if err != nil {
		if !streamtx.IsPermanent(err) {
			t.Fatalf("Decode[%T] error is not permanent: %v", e.Data, err)
		}
		if !errors.Is(err, streamtx.ErrBadEnvelope) && !errors.Is(err, streamtx.ErrSchemaVersion) && !errors.Is(err, streamtx.ErrContentType) {
			t.Fatalf("Decode[%T] error wraps no envelope sentinel: %v", e.Data, err)
		}
		return
	}
	if !roundTrip || e.SchemaVersion < 1 {
		return // Fields writes versions below 1 as the default or refuses them
	}
	fields, err := e.Fields()
	if err != nil {
		t.Fatalf("Fields of a decoded envelope %+v: %v", e, err)
	}
	again, err := streamtx.Decode[T](&streamtx.Message{Values: evValues(t, fields)}, opts...)
	if err != nil {
		t.Fatalf("Decode of re-encoded envelope: %v", err)
	}
	if !again.Time.Equal(e.Time) {
		t.Fatalf("time %v became %v", e.Time, again.Time)
	}
	again.Time, e.Time = time.Time{}, time.Time{}
	if !reflect.DeepEqual(again, e) {
		t.Fatalf("round trip:\n got %#v\nwant %#v", again, e)
	}
}
