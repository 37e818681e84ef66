package streamtx_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/internal/msgp"
	"github.com/streamtx/streamtx/internal/txnengine"
	"github.com/streamtx/streamtx/txn"
)

type evOrder struct {
	Order  string
	Amount int64
	Lines  []evLine
	Tags   map[string]string
}

type evLine struct {
	SKU string
	Qty int
}

// evValues turns an envelope's fields into the values of a Message, as
// the consumer would deliver them, going through tx.Publish's formatting.
func evValues(t testing.TB, fields map[string]any) map[string]string {
	t.Helper()
	tx := txnengine.New(nil, "1-1")
	require.NoError(t, tx.Publish("s", fields))
	return evPairs(tx.Publishes()[0].Fields)
}

func evPairs(kv []string) map[string]string {
	m := make(map[string]string, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func evSample() streamtx.Envelope[evOrder] {
	return streamtx.Envelope[evOrder]{
		ID:            "evt-1",
		Type:          "com.example.order.placed",
		Source:        "/shop",
		Subject:       "order-42",
		CorrelationID: "req-7",
		Time:          time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.FixedZone("CEST", 2*3600)),
		Data: evOrder{
			Order: "42", Amount: 1999,
			Lines: []evLine{{"A-1", 2}, {"B-2", 1}},
			Tags:  map[string]string{"channel": "web"},
		},
	}
}

func TestEnvelopeRoundTrip(t *testing.T) {
	t.Parallel()
	for _, ct := range []string{"", streamtx.ContentTypeMsgpack, streamtx.ContentTypeJSON, "Application/JSON; charset=utf-8"} {
		t.Run(ct, func(t *testing.T) {
			in := evSample()
			in.DataContentType = ct
			fields, err := in.Fields()
			require.NoError(t, err)
			values := evValues(t, fields)

			wantCT := streamtx.ContentTypeMsgpack
			if strings.Contains(strings.ToLower(ct), "json") {
				wantCT = streamtx.ContentTypeJSON
			}
			assert.Equal(t, map[string]string{
				"specversion":     "1.0",
				"id":              "evt-1",
				"type":            "com.example.order.placed",
				"source":          "/shop",
				"subject":         "order-42",
				"correlationid":   "req-7",
				"time":            "2024-05-06T05:08:09.123456789Z",
				"schemaversion":   "1",
				"datacontenttype": wantCT,
				"data":            values["data"],
			}, values)
			if wantCT == streamtx.ContentTypeJSON {
				assert.JSONEq(t, `{"Order":"42","Amount":1999,"Lines":[{"SKU":"A-1","Qty":2},{"SKU":"B-2","Qty":1}],"Tags":{"channel":"web"}}`, values["data"])
			} else {
				p, err := msgp.Decode[evOrder]([]byte(values["data"]))
				require.NoError(t, err)
				assert.Equal(t, in.Data, *p)
			}

			out, err := streamtx.Decode[evOrder](&streamtx.Message{Stream: "s", ID: "1-1", Values: values})
			require.NoError(t, err)
			assert.True(t, in.Time.Equal(out.Time), "time %s, want %s", out.Time, in.Time)
			in.Time, out.Time = time.Time{}, time.Time{}
			in.SchemaVersion, in.DataContentType = 1, wantCT
			assert.Equal(t, in, out)
		})
	}
}

func TestEnvelopeFieldsOmitsEmptyOptionals(t *testing.T) {
	t.Parallel()
	fields, err := streamtx.Envelope[string]{ID: "1", Type: "t", Source: "s", Data: "x"}.Fields()
	require.NoError(t, err)
	values := evValues(t, fields)
	assert.ElementsMatch(t, []string{"specversion", "id", "type", "source", "schemaversion", "datacontenttype", "data"}, evFieldNames(values))
	out, err := streamtx.Decode[string](&streamtx.Message{Values: values})
	require.NoError(t, err)
	assert.Equal(t, streamtx.Envelope[string]{ID: "1", Type: "t", Source: "s", SchemaVersion: 1, DataContentType: streamtx.ContentTypeMsgpack, Data: "x"}, out)
}

func evFieldNames(m map[string]string) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func TestEnvelopeFieldsRefuses(t *testing.T) {
	t.Parallel()
	ok := streamtx.Envelope[any]{ID: "1", Type: "t", Source: "s", Data: 1}
	tests := map[string]struct {
		mod  func(*streamtx.Envelope[any])
		want error
		msg  string
	}{
		"no ID":            {func(e *streamtx.Envelope[any]) { e.ID = "" }, streamtx.ErrBadEnvelope, "empty ID"},
		"no Type":          {func(e *streamtx.Envelope[any]) { e.Type = "" }, streamtx.ErrBadEnvelope, "empty Type"},
		"no Source":        {func(e *streamtx.Envelope[any]) { e.Source = "" }, streamtx.ErrBadEnvelope, "empty Source"},
		"negative version": {func(e *streamtx.Envelope[any]) { e.SchemaVersion = -1 }, streamtx.ErrBadEnvelope, "negative SchemaVersion"},
		"content type":     {func(e *streamtx.Envelope[any]) { e.DataContentType = "text/plain" }, streamtx.ErrContentType, `"text/plain"`},
		"msgpack encode":   {func(e *streamtx.Envelope[any]) { e.Data = func() {} }, streamtx.ErrBadEnvelope, "encode"},
		"json encode": {func(e *streamtx.Envelope[any]) {
			e.DataContentType, e.Data = streamtx.ContentTypeJSON, make(chan int)
		}, streamtx.ErrBadEnvelope, "encode"},
		"year 10000": {func(e *streamtx.Envelope[any]) {
			e.Time = time.Date(9999, 12, 31, 23, 0, 0, 0, time.FixedZone("", -2*3600))
		}, streamtx.ErrBadEnvelope, "0000-9999"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			e := ok
			tt.mod(&e)
			_, err := e.Fields()
			require.ErrorIs(t, err, tt.want)
			assert.Contains(t, err.Error(), tt.msg)

			tx := txnengine.New(nil, "1-1")
			err = streamtx.PublishEnvelope((*txn.Tx)(tx), "out", e)
			require.ErrorIs(t, err, tt.want)
			require.ErrorIs(t, err, txn.ErrBadPublish, "the consumer treats it as permanent")
			assert.Empty(t, tx.Publishes())
		})
	}
}

func TestPublishEnvelopeBuffersInTx(t *testing.T) {
	t.Parallel()
	tx := txnengine.New(nil, "1-1")
	e := evSample()
	require.NoError(t, streamtx.PublishEnvelope((*txn.Tx)(tx), "out", e))
	pubs := tx.Publishes()
	require.Len(t, pubs, 1)
	assert.Equal(t, "out", pubs[0].Stream)
	out, err := streamtx.Decode[evOrder](&streamtx.Message{Values: evPairs(pubs[0].Fields)})
	require.NoError(t, err)
	assert.Equal(t, e.Data, out.Data)
	tx.Rollback()
	assert.Empty(t, tx.Publishes(), "rolled back with the transaction")
}

func TestDecodeRefuses(t *testing.T) {
	t.Parallel()
	good, err := streamtx.Envelope[evOrder]{ID: "1", Type: "t", Source: "s", Data: evOrder{Order: "1"}}.Fields()
	require.NoError(t, err)
	base := evValues(t, good)
	with := func(kv ...string) map[string]string {
		m := make(map[string]string, len(base))
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "<del>" {
				delete(m, kv[i])
			} else {
				m[kv[i]] = kv[i+1]
			}
		}
		return m
	}
	tests := map[string]struct {
		values map[string]string
		opts   []streamtx.DecodeOption
		want   error
		msg    string
	}{
		"no id":              {with("id", "<del>"), nil, streamtx.ErrBadEnvelope, `missing "id"`},
		"empty type":         {with("type", ""), nil, streamtx.ErrBadEnvelope, `missing "type"`},
		"no source":          {with("source", "<del>"), nil, streamtx.ErrBadEnvelope, `missing "source"`},
		"no data":            {with("data", "<del>"), nil, streamtx.ErrBadEnvelope, `missing "data"`},
		"empty data":         {with("data", ""), nil, streamtx.ErrBadEnvelope, `missing "data"`},
		"version 2":          {with("schemaversion", "2"), nil, streamtx.ErrSchemaVersion, "version 2"},
		"version 0":          {with("schemaversion", "0"), nil, streamtx.ErrSchemaVersion, "version 0"},
		"version 3 of 1,2":   {with("schemaversion", "3"), []streamtx.DecodeOption{streamtx.AcceptVersions(1, 2)}, streamtx.ErrSchemaVersion, "accepted: [1 2]"},
		"version 1 of 2":     {base, []streamtx.DecodeOption{streamtx.AcceptVersions(2)}, streamtx.ErrSchemaVersion, "version 1"},
		"version not int":    {with("schemaversion", "v1"), nil, streamtx.ErrBadEnvelope, "not an integer"},
		"bad time":           {with("time", "yesterday"), nil, streamtx.ErrBadEnvelope, "not RFC 3339"},
		"time before year 0": {with("time", "0000-01-01T00:00:00+01:00"), nil, streamtx.ErrBadEnvelope, "0000-9999"},
		"content type":       {with("datacontenttype", "application/xml"), nil, streamtx.ErrContentType, "application/xml"},
		"empty content type": {with("datacontenttype", ""), nil, streamtx.ErrContentType, ""},
		"garbage msgpack":    {with("data", "\xc1"), nil, streamtx.ErrBadEnvelope, "data of"},
		"trailing msgpack":   {with("data", base["data"]+"\x00"), nil, streamtx.ErrBadEnvelope, "trailing"},
		"huge msgpack array": {with("data", "\xdd\xff\xff\xff\xff"), nil, streamtx.ErrBadEnvelope, "data of"},
		"msgpack wrong type": {with("data", "\xa3abc"), nil, streamtx.ErrBadEnvelope, "data of"},
		"json as msgpack":    {with("data", `{"Order":"1"}`), nil, streamtx.ErrBadEnvelope, "data of"},
		"bad json": {with("datacontenttype", streamtx.ContentTypeJSON, "data", `{"Order":`),
			nil, streamtx.ErrBadEnvelope, "data of"},
		"json wrong type": {with("datacontenttype", streamtx.ContentTypeJSON, "data", `{"Amount":"many"}`),
			nil, streamtx.ErrBadEnvelope, "data of"},
		"long type is truncated": {with("schemaversion", "9", "type", strings.Repeat("x", 10000)),
			nil, streamtx.ErrSchemaVersion, "…"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			msg := &streamtx.Message{Stream: "in", ID: "5-0", Values: tt.values}
			out, err := streamtx.Decode[evOrder](msg, tt.opts...)
			require.Error(t, err)
			assert.ErrorIs(t, err, tt.want)
			assert.True(t, streamtx.IsPermanent(err), "Decode errors are permanent: %v", err)
			assert.Contains(t, err.Error(), tt.msg)
			assert.Contains(t, err.Error(), "in 5-0", "the error names the entry")
			assert.Less(t, len(err.Error()), 1000, "entry values are truncated in errors")
			assert.Equal(t, streamtx.Envelope[evOrder]{}, out)
		})
	}

	_, err = streamtx.Decode[evOrder](nil)
	require.ErrorIs(t, err, streamtx.ErrBadEnvelope)
	require.True(t, streamtx.IsPermanent(err))
}

func TestDecodeDefaultsAndVersions(t *testing.T) {
	t.Parallel()
	// An entry written by another producer: no specversion, schemaversion or
	// datacontenttype; extra fields.
	values := map[string]string{
		"id": "x", "type": "t", "source": "s", "data": "\xa2hi", "trace": "abc",
	}
	e, err := streamtx.Decode[string](&streamtx.Message{Values: values})
	require.NoError(t, err)
	assert.Equal(t, streamtx.Envelope[string]{ID: "x", Type: "t", Source: "s", SchemaVersion: 1, DataContentType: streamtx.ContentTypeMsgpack, Data: "hi"}, e)

	values["schemaversion"] = "2"
	_, err = streamtx.Decode[string](&streamtx.Message{Values: values})
	require.ErrorIs(t, err, streamtx.ErrSchemaVersion)
	e, err = streamtx.Decode[string](&streamtx.Message{Values: values}, streamtx.AcceptVersions(1, 2))
	require.NoError(t, err)
	assert.Equal(t, 2, e.SchemaVersion)
	e, err = streamtx.Decode[string](&streamtx.Message{Values: values}, streamtx.AcceptVersions())
	require.ErrorIs(t, err, streamtx.ErrSchemaVersion, "AcceptVersions() keeps the default")

	// JSON null decodes to the zero value.
	_, err = streamtx.Decode[*evOrder](&streamtx.Message{Values: map[string]string{
		"id": "x", "type": "t", "source": "s", "datacontenttype": "application/json", "data": "null",
	}})
	require.NoError(t, err)
}

// TestDecodeErrorDeadLettersTheEntry runs a consumer whose handler decodes
// envelopes: a valid one is handled, an undecodable one and one of an unknown
// schema version are dead-lettered on their first delivery.
func TestDecodeErrorDeadLettersTheEntry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := context.Background()
	src := e.key("orders")

	good, err := evSample().Fields()
	require.NoError(t, err)
	v2 := evSample()
	v2.ID, v2.SchemaVersion = "evt-2", 2
	newer, err := v2.Fields()
	require.NoError(t, err)
	bad := map[string]any{"id": "evt-3", "type": "t", "source": "s", "data": "\xdd\xff\xff\xff\xff"}
	for _, f := range []map[string]any{good, newer, bad} {
		require.NoError(t, e.rdb.XAdd(ctx, &redis.XAddArgs{Stream: src, Values: f}).Err())
	}

	var handled []string
	h := streamtx.HandlerFunc(func(ctx context.Context, msg *streamtx.Message, tx *txn.Tx) error {
		ev, err := streamtx.Decode[evOrder](msg)
		if err != nil {
			return err
		}
		handled = append(handled, ev.ID)
		return nil
	})
	// The observer runs on the consumer's goroutines: it records, and the
	// test checks after stop (Run has returned: nothing writes any more).
	var deadLetters []streamtx.Event
	cfg := e.cfg(src, "g", "c1")
	cfg.Observer = streamtx.ObserverFunc(func(ev streamtx.Event) {
		if ev.Kind == streamtx.EventDeadLetter {
			deadLetters = append(deadLetters, ev)
		}
	})
	c, err := streamtx.NewConsumer(e.rdb, cfg, h)
	require.NoError(t, err)
	stop := run(t, c)
	eventually(t, "the group to have nothing pending", func() bool {
		n, err := e.rdb.XLen(ctx, c.DeadLetterStream()).Result()
		return err == nil && n == 2 && e.pending(src, "g") == 0
	})
	stop()
	assert.Equal(t, []string{"evt-1"}, handled)
	require.Len(t, deadLetters, 2)
	for _, ev := range deadLetters {
		assert.Equal(t, int64(1), ev.Deliveries, "%s dead-lettered on the first delivery", ev.IDs)
	}
	assert.True(t, errors.Is(deadLetters[0].Err, streamtx.ErrSchemaVersion), "%v", deadLetters[0].Err)
	assert.True(t, errors.Is(deadLetters[1].Err, streamtx.ErrBadEnvelope), "%v", deadLetters[1].Err)
}
