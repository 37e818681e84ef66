package txn

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/streamtx/streamtx/internal/txnengine"
	"github.com/streamtx/streamtx/state"
)

// State is a declared state record type: a name and a codec for values of
// type S. Declare it once (a package variable) and read it in the handler
// through the Tx: Get for the one value of (stream, group, name), GetKey for
// one value per entity key, such as a SKU. A handler may use several States.
//
// The value Get returns is the one left by the last committed entry (the
// zero value at first), with this transaction's changes: change it in place,
// and the change is committed with the entry — exactly once, together with
// the entry's publishes and acknowledgement — or dropped if the handler
// fails.
//
// Two States of one name are one record: give them the same type S. A State
// is safe for concurrent use.
type State[S any] struct {
	name  string
	codec state.Codec[S]
	eng   txnengine.Codec // codec, as the engine takes it

	once sync.Once
	err  error // the codec refuses S (see state.Msgpack)
}

// NewState declares state name of type S, encoded with state.Msgpack[S]().
// Names are per stream and group: the same name on two streams, or for two
// groups, gives independent records.
func NewState[S any](name string) *State[S] {
	return newState(name, state.Msgpack[S]())
}

// WithCodec returns a copy of s that encodes with c, for example
// state.JSON[S](). A nil c makes a State whose Get fails.
func (s *State[S]) WithCodec(c state.Codec[S]) *State[S] {
	return newState(s.name, c)
}

func newState[S any](name string, c state.Codec[S]) *State[S] {
	return &State[S]{name: name, codec: c, eng: anyCodec[S]{c}}
}

// Name returns the state's name.
func (s *State[S]) Name() string { return s.name }

// Get returns the working value of the state's one record for the entry's
// stream and group, loading it from Redis unless it is cached.
//
// It returns an error, never panics: the codec refuses S (an unexported
// field, naming it), the record does not decode (ErrStateDecode), Redis
// cannot be read, or another parallel lane holds the record
// (ErrLaneConflict). Return the error from the handler.
func (s *State[S]) Get(ctx context.Context, tx *Tx) (*S, error) {
	return s.get(ctx, tx, "", false)
}

// GetKey is Get for the record of one entity key: one value per (stream,
// group, name, key). Entries with different keys touch different records, so
// consumers of one group rarely contend.
func (s *State[S]) GetKey(ctx context.Context, tx *Tx, key string) (*S, error) {
	return s.get(ctx, tx, key, true)
}

func (s *State[S]) get(ctx context.Context, tx *Tx, key string, keyed bool) (*S, error) {
	if s == nil || s.codec == nil {
		return nil, errors.New("txn: a State without a codec (make it with NewState)")
	}
	if tx == nil {
		return nil, fmt.Errorf("txn: state %q: nil Tx", s.name)
	}
	if err := s.check(); err != nil {
		return nil, err
	}
	v, err := tx.engine().State(ctx, s.name, key, keyed, s.eng)
	if err != nil {
		return nil, err
	}
	p, ok := v.(*S)
	if !ok {
		return nil, fmt.Errorf("txn: state %q holds a %T, not a %T: two States of one name with different types", s.name, v, p)
	}
	return p, nil
}

// check reports, once, whether the codec refuses S: decoding an absent
// record (no bytes) gives the zero value unless it does.
func (s *State[S]) check() error {
	s.once.Do(func() {
		if _, err := s.codec.Decode(nil); err != nil {
			s.err = fmt.Errorf("txn: state %q: %w", s.name, err)
		}
	})
	return s.err
}

// anyCodec adapts a state.Codec to the engine, which holds values as any.
type anyCodec[S any] struct{ c state.Codec[S] }

func (a anyCodec[S]) Decode(b []byte) (any, error) {
	v, err := a.c.Decode(b)
	if err != nil {
		return nil, err
	}
	if v == nil {
		return nil, fmt.Errorf("state codec %T: Decode returned nil", a.c)
	}
	return v, nil
}

func (a anyCodec[S]) Encode(v any) ([]byte, error) {
	p, ok := v.(*S)
	if !ok {
		return nil, fmt.Errorf("state codec %T: encode a %T", a.c, v)
	}
	return a.c.Encode(p)
}
