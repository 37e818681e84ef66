// Package txnengine is the transaction engine behind package txn: the
// buffer a handler works in, and the consumer's cache of state records.
//
// A Tx collects everything a handler does for one entry — state changes and
// publishes — and nothing of it reaches Redis unless the consumer commits it.
// When the handler fails, the consumer rolls the Tx back: state is as it was
// before the handler ran and the publishes are discarded.
//
// Package txn declares its Tx as this Tx (type txn.Tx txnengine.Tx): a
// *txn.Tx and a *txnengine.Tx convert into each other. The user's methods
// (Publish, IdempotencyKey, EntryID, Err) are txn's; the consumer's
// (Seal, Rollback, Reset, Publishes, State) are here, out of the API.
//
// A Tx belongs to one handler call and is not safe for concurrent use.
package txnengine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/streamtx/streamtx/internal/partition"
)

// ErrBadPublish is returned by Publish for a publish that can never commit: an
// empty stream name, no values, a value of an unsupported type, or a target
// the consumer refuses (another Redis Cluster slot). The consumer treats a
// handler whose publish failed as failed with a permanent error.
var ErrBadPublish = errors.New("txn: bad publish")

// ErrStateDecode is returned when a stored state record does not decode into
// the handler's state type. The error names the key.
var ErrStateDecode = errors.New("txn: state record does not decode")

// Publish is one buffered XADD.
type Publish struct {
	Stream string
	Fields []string // field, value, field, value, …
}

// Tx is the transaction of one handler call for one entry.
type Tx struct {
	entryID string
	env     *Env
	pubs    []Publish
	touched []*Slot
	err     error
	lane    int
	trace   []string // trace context fields added to every publish (see SetTrace)

	// Most handlers publish once and touch one record: room for those in
	// the Tx itself saves an allocation each.
	pub1   [1]Publish
	touch1 [1]*Slot
}

// Env is what a consumer lends its transactions: the state cache and the
// publish policy. A nil Env gives a Tx without state (Publish still works).
type Env struct {
	// States caches state records; required for Tx.State.
	States *States
	// Route, when set, vets every publish before it is buffered, and may
	// rewrite it (to send a publish for another cluster slot through an
	// outbox stream in the source's slot).
	Route func(p *Publish) error
	// IdempotencyPrefix is put before the entry ID to make IdempotencyKey;
	// the consumer sets it to identify the stream and group.
	IdempotencyPrefix string
	// Topic resolves a topic name for PublishKeyed, without a round trip
	// once the topic is known. An error wrapping ErrBadPublish means the
	// topic can never be published to; any other fails the handler call
	// (and is retried). Nil: PublishKeyed fails.
	Topic func(name string) (*partition.Meta, error)
}

// New returns the transaction for the entry with the given ID.
func New(env *Env, entryID string) *Tx {
	return &Tx{entryID: entryID, env: env}
}

// Reset makes tx the transaction of the entry with the given ID, in lane (0
// unless the batch is handled in lanes, see NewInLane), as New would: it
// lets a consumer allocate a batch's transactions in one slice.
func (tx *Tx) Reset(env *Env, entryID string, lane int) {
	*tx = Tx{entryID: entryID, env: env, lane: lane}
}

// NewInLane returns the transaction of an entry handled in one of several
// parallel lanes of a batch. Transactions of different lanes may run
// concurrently; those of one lane must run one after the other.
func NewInLane(env *Env, entryID string, lane int) *Tx {
	return &Tx{entryID: entryID, env: env, lane: lane}
}

// SetTrace makes every later Publish of tx carry fields (name, value, …):
// the trace context of the handler run. A publish's own values of the same
// names are left out. The fields are added after Env.Route, unescaped, so
// that an outbox entry carries them as its own.
func (tx *Tx) SetTrace(fields []string) { tx.trace = fields }

// EntryID returns the ID of the entry being handled.
func (tx *Tx) EntryID() string { return tx.entryID }

// IdempotencyKey returns a key that is the same on every delivery of this
// entry to this group and different for every other entry or group. Use it to
// make side effects outside Redis idempotent: those run at least once.
func (tx *Tx) IdempotencyKey() string {
	if tx.env == nil {
		return tx.entryID
	}
	return tx.env.IdempotencyPrefix + tx.entryID
}

// Publish buffers an XADD of values to stream. It is appended only if the
// transaction commits, in the same script as the state and the
// acknowledgement. Values may be strings, []byte, booleans, integers, floats,
// or fmt.Stringer; fields are written in sorted order.
//
// It returns an error wrapping ErrBadPublish when the publish can never
// commit; the error also sticks to the Tx, so a handler that ignores it still
// fails.
func (tx *Tx) Publish(stream string, values map[string]any) error {
	if err := tx.publish(stream, values); err != nil {
		if tx.err == nil {
			tx.err = err
		}
		return err
	}
	return nil
}

func (tx *Tx) publish(stream string, values map[string]any) error {
	if stream == "" {
		return fmt.Errorf("%w: empty stream name", ErrBadPublish)
	}
	if len(values) == 0 {
		return fmt.Errorf("%w: to %q: no values", ErrBadPublish, stream)
	}
	// Field names first, sorted, then each followed by its value.
	kv := make([]string, 0, 2*len(values)+len(tx.trace))
	for k := range values {
		if tx.trace == nil || !tx.traced(k) {
			kv = append(kv, k)
		}
	}
	if len(kv) == 0 {
		return fmt.Errorf("%w: to %q: no values but trace context", ErrBadPublish, stream)
	}
	if len(kv) > 1 {
		sort.Strings(kv)
	}
	n := len(kv)
	kv = kv[:2*n]
	for i := n - 1; i >= 0; i-- {
		k := kv[i]
		v, err := format(values[k])
		if err != nil {
			return fmt.Errorf("%w: to %q: field %q: %w", ErrBadPublish, stream, k, err)
		}
		kv[2*i], kv[2*i+1] = k, v
	}
	p := Publish{Stream: stream, Fields: kv}
	if tx.env != nil && tx.env.Route != nil {
		if err := tx.env.Route(&p); err != nil {
			return fmt.Errorf("%w: to %q: %w", ErrBadPublish, stream, err)
		}
	}
	if tx.trace != nil {
		p.Fields = append(p.Fields, tx.trace...)
	}
	if tx.pubs == nil {
		tx.pubs = tx.pub1[:0]
	}
	tx.pubs = append(tx.pubs, p)
	return nil
}

// traced reports whether field is one of the trace fields.
func (tx *Tx) traced(field string) bool {
	for i := 0; i < len(tx.trace); i += 2 {
		if tx.trace[i] == field {
			return true
		}
	}
	return false
}

func format(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case []byte:
		return string(x), nil
	case bool:
		return strconv.FormatBool(x), nil
	case int:
		return strconv.Itoa(x), nil
	case int8:
		return strconv.FormatInt(int64(x), 10), nil
	case int16:
		return strconv.FormatInt(int64(x), 10), nil
	case int32:
		return strconv.FormatInt(int64(x), 10), nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case uint:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint8:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint16:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint32:
		return strconv.FormatUint(uint64(x), 10), nil
	case uint64:
		return strconv.FormatUint(x, 10), nil
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32), nil
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64), nil
	case fmt.Stringer:
		return x.String(), nil
	case nil:
		return "", errors.New("nil value")
	default:
		return "", fmt.Errorf("unsupported type %T", v)
	}
}

// Publishes returns the buffered publishes, in the order they were made.
func (tx *Tx) Publishes() []Publish { return tx.pubs }

// Err returns the first error Publish returned, if any.
func (tx *Tx) Err() error { return tx.err }

// State returns the working value of the state record (name, key), loading
// it through the Env's States when it is not cached. The value is the one
// left by the last successful transaction; changes made to it become part of
// this transaction. Stateful and Keyed call it for you.
func (tx *Tx) State(ctx context.Context, name, key string, keyed bool, codec Codec) (any, error) {
	if tx.env == nil || tx.env.States == nil {
		return nil, errors.New("txn: this transaction has no state store")
	}
	s, err := tx.env.States.slot(ctx, name, key, keyed, codec, tx.lane)
	if err != nil {
		return nil, err
	}
	v, err := s.working()
	if err != nil {
		return nil, err
	}
	for _, t := range tx.touched {
		if t == s {
			return v, nil
		}
	}
	if tx.touched == nil {
		tx.touched = tx.touch1[:0]
	}
	tx.touched = append(tx.touched, s)
	return v, nil
}

// Seal ends a successful handler call: it marks every state record the
// transaction touched to be written with this entry as its last entry. It
// encodes each such record, once, unless the States defer encoding to the
// end of the batch (see States.DeferEncoding). A Seal error (a value that
// does not encode) means the transaction failed; the caller must then call
// Rollback.
func (tx *Tx) Seal() error {
	if tx.err != nil {
		return tx.err
	}
	if len(tx.touched) == 0 {
		return nil
	}
	st := tx.env.States
	if st.deferEncoding() {
		for _, s := range tx.touched {
			s.lastID = tx.entryID
			st.markFresh(s)
		}
		return nil
	}
	for _, s := range tx.touched {
		b, err := s.codec.Encode(s.value)
		if err != nil {
			return fmt.Errorf("txn: encode state %q: %w", s.Key, err)
		}
		s.pending = b
	}
	for _, s := range tx.touched {
		s.blob, s.pending = s.pending, nil
		s.lastID = tx.entryID
		st.markDirty(s)
	}
	return nil
}

// Rollback undoes a failed handler call: every state record it touched goes
// back to its value before the call, and the publishes are discarded.
//
// With deferred encoding, a record that an earlier transaction of the batch
// changed cannot go back on its own (its last encoding is older): Rollback
// then flags the States (NeedsRestore), and the caller restores the batch.
func (tx *Tx) Rollback() {
	for _, s := range tx.touched {
		if s.fresh {
			tx.env.States.flagRestore()
			continue
		}
		s.value, s.pending = nil, nil
	}
	tx.touched = nil
	tx.pubs = nil
}
