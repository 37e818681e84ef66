package streamtx

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/streamtx/streamtx/internal/msgp"
	"github.com/streamtx/streamtx/txn"
)

// Content types of an Envelope's data.
const (
	// ContentTypeMsgpack is the default: Data encoded as msgpack, the
	// encoding of handler state.
	ContentTypeMsgpack = "application/msgpack"
	// ContentTypeJSON is Data encoded with encoding/json, for streams that
	// non-Go readers consume.
	ContentTypeJSON = "application/json"
)

// The stream fields of an Envelope: CloudEvents 1.0 attribute names, plus
// "schemaversion" and "correlationid" as extension attributes.
const (
	fieldSpecVersion   = "specversion"
	fieldID            = "id"
	fieldType          = "type"
	fieldSource        = "source"
	fieldSubject       = "subject"
	fieldTime          = "time"
	fieldSchemaVersion = "schemaversion"
	fieldCorrelationID = "correlationid"
	fieldContentType   = "datacontenttype"
	fieldData          = "data"

	specVersion = "1.0"
)

// Errors of typed events. Decode wraps each of them with Permanent.
var (
	// ErrBadEnvelope is returned by Decode for an entry that is not a valid
	// envelope — a missing id, type, source or data, a time or schema
	// version that does not parse, data that does not decode into the
	// payload type — and by Envelope.Fields for an envelope that cannot be
	// published (a missing ID, Type or Source, a negative SchemaVersion, a
	// Time outside the years 0000-9999 UTC, data that does not encode).
	ErrBadEnvelope = errors.New("streamtx: bad envelope")

	// ErrSchemaVersion is returned by Decode for an envelope whose schema
	// version is not among the accepted ones (see AcceptVersions).
	ErrSchemaVersion = errors.New("streamtx: schema version not accepted")

	// ErrContentType is returned by Decode, and by Envelope.Fields, for a
	// data content type other than ContentTypeMsgpack and ContentTypeJSON.
	ErrContentType = errors.New("streamtx: unsupported data content type")
)

// Envelope is a typed event: a payload of type T with CloudEvents attributes,
// stored as the fields of one stream entry:
//
//	specversion      "1.0"
//	id               ID (required)
//	type             Type (required)
//	source           Source (required)
//	subject          Subject (omitted when empty)
//	time             Time, RFC 3339 with nanoseconds, UTC (omitted when zero)
//	schemaversion    SchemaVersion, a decimal integer (1 when zero)
//	correlationid    CorrelationID (omitted when empty)
//	datacontenttype  DataContentType (ContentTypeMsgpack when empty)
//	data             Data, encoded as DataContentType says
//
// Publish one with PublishEnvelope in a handler or Producer.PublishEnvelope
// outside one; read one with Decode.
type Envelope[T any] struct {
	// ID identifies the event among those of Source; a producer retrying
	// the same event keeps the same ID. Required.
	ID string
	// Type names the kind of event, such as "com.example.order.placed".
	// Required.
	Type string
	// Source identifies who produced the event, such as "/billing".
	// Required.
	Source string
	// Subject is what the event is about within Source, such as an order
	// number. Optional.
	Subject string
	// CorrelationID ties together the events of one flow. Optional.
	CorrelationID string
	// Time is when the event happened. Optional; stored in UTC.
	Time time.Time
	// SchemaVersion is the version of T's schema. Default 1. Bump it on an
	// incompatible change of T, after deploying readers that accept the new
	// version (see AcceptVersions).
	SchemaVersion int
	// DataContentType is how Data is encoded: ContentTypeMsgpack (default)
	// or ContentTypeJSON.
	DataContentType string
	// Data is the payload.
	Data T
}

// AnyEnvelope is an Envelope of any payload type, so that one
// Producer.PublishEnvelope method serves them all. Only Envelope[T]
// implements it.
type AnyEnvelope interface {
	Fields() (map[string]any, error)
	envelopeFields(clock func() time.Time) (fields map[string]any, source, id string, err error)
}

var _ AnyEnvelope = Envelope[struct{}]{}

// Fields returns e as the values of a stream entry, for tx.Publish or
// Producer.Publish (see Envelope for the fields). Errors wrap ErrBadEnvelope
// (a missing ID, Type or Source, a negative SchemaVersion, a Time outside the
// years RFC 3339 can write, data that does not encode) or ErrContentType.
func (e Envelope[T]) Fields() (map[string]any, error) {
	fields, _, _, err := e.envelopeFields(nil)
	return fields, err
}

// envelopeFields is Fields, with a zero Time set from clock when clock is not
// nil.
func (e Envelope[T]) envelopeFields(clock func() time.Time) (map[string]any, string, string, error) {
	switch {
	case e.ID == "":
		return nil, "", "", fmt.Errorf("%w: empty ID", ErrBadEnvelope)
	case e.Type == "":
		return nil, "", "", fmt.Errorf("%w: empty Type", ErrBadEnvelope)
	case e.Source == "":
		return nil, "", "", fmt.Errorf("%w: empty Source", ErrBadEnvelope)
	case e.SchemaVersion < 0:
		return nil, "", "", fmt.Errorf("%w: negative SchemaVersion %d", ErrBadEnvelope, e.SchemaVersion)
	}
	version := e.SchemaVersion
	if version == 0 {
		version = 1
	}
	ct := ContentTypeMsgpack
	if e.DataContentType != "" {
		ct = mediaType(e.DataContentType)
	}
	var data []byte
	var err error
	switch ct {
	case ContentTypeMsgpack:
		data, err = msgp.Encode(&e.Data)
	case ContentTypeJSON:
		data, err = json.Marshal(e.Data)
	default:
		return nil, "", "", fmt.Errorf("%w: %q (want %q or %q)", ErrContentType, e.DataContentType, ContentTypeMsgpack, ContentTypeJSON)
	}
	if err != nil {
		return nil, "", "", fmt.Errorf("%w: encode %T data as %s: %w", ErrBadEnvelope, e.Data, ct, err)
	}
	fields := map[string]any{
		fieldSpecVersion:   specVersion,
		fieldID:            e.ID,
		fieldType:          e.Type,
		fieldSource:        e.Source,
		fieldSchemaVersion: version,
		fieldContentType:   ct,
		fieldData:          data,
	}
	if e.Subject != "" {
		fields[fieldSubject] = e.Subject
	}
	if e.CorrelationID != "" {
		fields[fieldCorrelationID] = e.CorrelationID
	}
	t := e.Time
	if t.IsZero() && clock != nil {
		t = clock()
	}
	if !t.IsZero() {
		t = t.UTC()
		if y := t.Year(); y < 0 || y > 9999 {
			return nil, "", "", fmt.Errorf("%w: Time %s is outside the years 0000-9999 of RFC 3339", ErrBadEnvelope, t)
		}
		fields[fieldTime] = t.Format(time.RFC3339Nano)
	}
	return fields, e.Source, e.ID, nil
}

// PublishEnvelope buffers the publish of e to stream in tx, like tx.Publish
// of e.Fields(): it is appended only if the transaction commits. A zero
// e.Time is left out (the entry's ID carries the time it was appended).
//
// Errors wrap txn.ErrBadPublish, which the consumer treats as permanent, and
// ErrBadEnvelope or ErrContentType when e cannot be encoded. Unlike an error
// of tx.Publish, an encoding error does not stick to tx: the handler must
// return it.
func PublishEnvelope[T any](tx *txn.Tx, stream string, e Envelope[T]) error {
	fields, err := e.Fields()
	if err != nil {
		return fmt.Errorf("%w: to %q: %w", txn.ErrBadPublish, stream, err)
	}
	return tx.Publish(stream, fields)
}

// DecodeOption modifies Decode.
type DecodeOption func(*decodeOptions)

type decodeOptions struct {
	versions []int
}

// AcceptVersions sets the schema versions Decode accepts, replacing the
// default, which is version 1 only. A reader that understands versions 1 and
// 2 of a payload passes AcceptVersions(1, 2) and looks at the returned
// envelope's SchemaVersion; deploy it before the producers of version 2.
// AcceptVersions() with no versions keeps the default.
func AcceptVersions(versions ...int) DecodeOption {
	return func(o *decodeOptions) {
		if len(versions) > 0 {
			o.versions = slices.Clone(versions)
		}
	}
}

// Decode reads msg as an Envelope with a payload of type T (see Envelope for
// the fields). A missing schemaversion is version 1 and a missing
// datacontenttype is ContentTypeMsgpack, the defaults of Fields; the
// specversion field and fields that are not the envelope's are ignored.
//
// Every error is marked Permanent, so a handler that returns it has the
// entry dead-lettered at once — retrying cannot make it decode — and wraps
// one of:
//   - ErrBadEnvelope: msg is nil, id, type, source or data is missing, time
//     is not RFC 3339 (within the years 0000-9999 UTC), schemaversion is not
//     an integer, or data does not decode into T;
//   - ErrSchemaVersion: the schema version is not accepted (only 1 by
//     default; see AcceptVersions);
//   - ErrContentType: datacontenttype is neither ContentTypeMsgpack nor
//     ContentTypeJSON.
//
// Decode never panics, whatever the bytes: msgpack lengths are checked
// against the input before anything is allocated.
func Decode[T any](msg *Message, opts ...DecodeOption) (Envelope[T], error) {
	e, err := decode[T](msg, opts)
	if err != nil {
		where := "<nil>"
		if msg != nil {
			where = msg.Stream + " " + msg.ID
		}
		return Envelope[T]{}, Permanent(fmt.Errorf("streamtx: decode %s: %w", where, err))
	}
	return e, nil
}

func decode[T any](msg *Message, opts []DecodeOption) (Envelope[T], error) {
	var e Envelope[T]
	if msg == nil {
		return e, fmt.Errorf("%w: nil message", ErrBadEnvelope)
	}
	o := decodeOptions{versions: []int{1}}
	for _, opt := range opts {
		opt(&o)
	}
	v := msg.Values
	for _, f := range [...]string{fieldID, fieldType, fieldSource} {
		if v[f] == "" {
			return e, fmt.Errorf("%w: missing %q", ErrBadEnvelope, f)
		}
	}
	e.ID, e.Type, e.Source = v[fieldID], v[fieldType], v[fieldSource]
	e.Subject, e.CorrelationID = v[fieldSubject], v[fieldCorrelationID]

	e.SchemaVersion = 1
	if s, ok := v[fieldSchemaVersion]; ok {
		n, err := strconv.Atoi(s)
		if err != nil {
			return e, fmt.Errorf("%w: %q is %q, not an integer", ErrBadEnvelope, fieldSchemaVersion, truncate(s))
		}
		e.SchemaVersion = n
	}
	if !slices.Contains(o.versions, e.SchemaVersion) {
		return e, fmt.Errorf("%w: version %d of %q (accepted: %v)", ErrSchemaVersion, e.SchemaVersion, truncate(e.Type), o.versions)
	}

	if s, ok := v[fieldTime]; ok && s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if y := t.UTC().Year(); err != nil || y < 0 || y > 9999 {
			return e, fmt.Errorf("%w: %q is %q, not RFC 3339 within the years 0000-9999 UTC", ErrBadEnvelope, fieldTime, truncate(s))
		}
		e.Time = t
	}

	e.DataContentType = ContentTypeMsgpack
	if s, ok := v[fieldContentType]; ok {
		e.DataContentType = mediaType(s)
	}
	data, ok := v[fieldData]
	if !ok || data == "" {
		return e, fmt.Errorf("%w: missing %q", ErrBadEnvelope, fieldData)
	}
	switch ct := e.DataContentType; {
	case ct == ContentTypeMsgpack:
		p, err := msgp.Decode[T]([]byte(data))
		if err != nil {
			return e, fmt.Errorf("%w: data of %q: %w", ErrBadEnvelope, truncate(e.Type), err)
		}
		e.Data = *p
	case ct == ContentTypeJSON:
		if err := json.Unmarshal([]byte(data), &e.Data); err != nil {
			return e, fmt.Errorf("%w: data of %q: %w", ErrBadEnvelope, truncate(e.Type), err)
		}
	default:
		return e, fmt.Errorf("%w: %q", ErrContentType, truncate(v[fieldContentType]))
	}
	return e, nil
}

// mediaType returns the media type of a content type, without parameters
// and in lower case: "Application/JSON; charset=utf-8" is "application/json".
func mediaType(ct string) string {
	ct, _, _ = strings.Cut(ct, ";")
	return strings.ToLower(strings.TrimSpace(ct))
}

// truncate bounds a string from an entry before it goes into an error
// message.
func truncate(s string) string {
	const max = 64
	if len(s) <= max {
		return s
	}
	return strings.ToValidUTF8(s[:max], "") + "…"
}
