package txnengine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/streamtx/streamtx/internal/record"
)

// Codec turns a state value into bytes and back. Values are pointers to the
// handler's state type; Decode of nil bytes returns the zero value.
type Codec interface {
	Decode(b []byte) (any, error)
	Encode(v any) ([]byte, error)
}

// Record is a state record as stored in Redis.
type Record = record.Record

// Loader reads the state records stored at Redis keys, in one round trip.
type Loader func(ctx context.Context, keys []string) ([]Record, error)

// Ref names a state record: a state name and, for keyed state, an entity key.
type Ref struct {
	Name, Key string
	Keyed     bool
}

// Namer maps a state name (and, for keyed state, an entity key) to a Redis key.
type Namer func(name, key string, keyed bool) string

// States is a consumer's cache of state records: what Redis holds at a known
// version, plus the changes of handled but not yet committed entries.
//
// Transactions of different lanes (see NewInLane) may run concurrently, each
// touching only its own records; everything else is for one goroutine.
type States struct {
	load  Loader
	name  Namer
	mu    sync.Mutex // guards slots, dirty and the lane marks of slots
	slots map[string]*Slot
	named map[string]string // unkeyed state name -> Redis key
	dirty []*Slot           // slots with uncommitted changes, in the order first changed
	max   int
	epoch uint64 // advanced by BeginBatch

	// deferred: Seal leaves changed values unencoded until EncodeBatch, so
	// a record changed by every entry of a batch is encoded once per batch.
	deferred bool
	restore  bool // a failed transaction touched a record changed earlier in the batch
}

// DeferEncoding makes Seal leave values unencoded: EncodeBatch encodes each
// changed record once, at the end of a batch. The price is paid only when a
// handler fails after another transaction of the batch changed a record it
// touched: the caller must then RestoreBatch and handle the batch's other
// entries again (NeedsRestore tells). Off, Seal encodes every time.
func (st *States) DeferEncoding(on bool) {
	st.mu.Lock()
	st.deferred = on
	st.mu.Unlock()
}

// ErrLaneConflict is returned by Tx.State when transactions of two lanes
// touch one state record in the same batch: with parallel lanes, a handler
// may only touch the state of its own partition key.
var ErrLaneConflict = errors.New("txn: state record touched from two parallel lanes in one batch")

// BeginBatch starts a batch: lane marks of earlier batches no longer count.
func (st *States) BeginBatch() {
	st.mu.Lock()
	st.epoch++
	st.mu.Unlock()
}

// NewStates returns an empty cache that loads through load and names keys
// with name. It keeps at most max clean records between batches (0: 10,000).
func NewStates(load Loader, name Namer, max int) *States {
	if max <= 0 {
		max = 10000
	}
	return &States{load: load, name: name, slots: make(map[string]*Slot), named: make(map[string]string), max: max}
}

// Slot is the working copy of one state record.
type Slot struct {
	Key     string
	version int64  // version in Redis this copy is based on
	token   string // token of the commit that wrote that version
	blob    []byte // data after the last successful transaction
	lastID  string
	base    []byte // data in Redis at version
	baseID  string // last entry ID in Redis at version
	value   any    // decoded working value; nil: decode blob when needed
	pending []byte // encoded during Seal, before it is applied
	gen     uint64 // incremented by every Seal that changes the slot
	dirty   bool
	// fresh: value holds changes that blob does not (deferred encoding).
	// The enc* fields are what to go back to from there: lastID, gen and
	// dirty as of the last time blob and value agreed.
	fresh    bool
	encID    string
	encGen   uint64
	encDirty bool
	lane     int // lane that touched it in batch epoch
	epoch    uint64
	codec    Codec
}

func (s *Slot) working() (any, error) {
	if s.value != nil {
		return s.value, nil
	}
	v, err := s.codec.Decode(s.blob)
	if err != nil {
		return nil, fmt.Errorf("%w: key %q (version %d): %w", ErrStateDecode, s.Key, s.version, err)
	}
	s.value = v
	return v, nil
}

// key returns the Redis key of a state record; st.mu must be held.
func (st *States) key(name, key string, keyed bool) string {
	k, ok := st.named[name]
	if keyed || !ok {
		k = st.name(name, key, keyed)
		if !keyed {
			st.named[name] = k
		}
	}
	return k
}

func newSlot(k string, rec Record) *Slot {
	return &Slot{Key: k, version: rec.Version, token: rec.Token, blob: rec.Data, lastID: rec.LastID, base: rec.Data, baseID: rec.LastID, encID: rec.LastID}
}

// agreed records that blob and value agree: the point RestoreBatch goes
// back to.
func (s *Slot) agreed() {
	s.fresh, s.encID, s.encGen, s.encDirty = false, s.lastID, s.gen, s.dirty
}

// EncodeBatch encodes, once, every record whose changes Seal left
// unencoded. On an error (a value that does not encode) nothing is changed:
// RestoreBatch, then handle the batch again with DeferEncoding off to find
// the entry at fault.
func (st *States) EncodeBatch() error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if !slices.ContainsFunc(st.dirty, func(s *Slot) bool { return s.fresh }) {
		return nil
	}
	blobs := make([][]byte, len(st.dirty))
	for i, s := range st.dirty {
		if !s.fresh {
			continue
		}
		b, err := s.codec.Encode(s.value)
		if err != nil {
			return fmt.Errorf("txn: encode state %q: %w", s.Key, err)
		}
		blobs[i] = b
	}
	for i, s := range st.dirty {
		if s.fresh {
			s.blob = blobs[i]
			s.agreed()
		}
	}
	return nil
}

// NeedsRestore reports whether a failed transaction touched a record that
// an earlier transaction of the batch had changed (deferred encoding): its
// value can no longer be trusted, so the batch must be restored and its
// other entries handled again.
func (st *States) NeedsRestore() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.restore
}

// RestoreBatch takes every record changed since the last EncodeBatch back
// to its value then, as if the batch's transactions had not run. Their
// publishes are the caller's to drop.
func (st *States) RestoreBatch() {
	st.mu.Lock()
	defer st.mu.Unlock()
	keep := st.dirty[:0]
	for _, s := range st.dirty {
		if s.fresh {
			s.value, s.fresh = nil, false
			s.lastID, s.gen, s.dirty = s.encID, s.encGen, s.encDirty
		}
		if s.dirty {
			keep = append(keep, s)
		}
	}
	clear(st.dirty[len(keep):])
	st.dirty = keep
	st.restore = false
}

// Prefetch loads the records refs name that are not cached, in one round
// trip, so that handlers do not wait for them one by one. With refresh, it
// also reloads the cached records without uncommitted changes, so that a
// record another consumer changed meanwhile does not fail the commit.
func (st *States) Prefetch(ctx context.Context, refs []Ref, refresh bool) error {
	st.mu.Lock()
	var missing []string
	seen := make(map[string]bool, len(refs))
	for _, r := range refs {
		k := st.key(r.Name, r.Key, r.Keyed)
		s, ok := st.slots[k]
		if (!ok || (refresh && !s.dirty)) && !seen[k] {
			seen[k] = true
			missing = append(missing, k)
		}
	}
	st.mu.Unlock()
	if len(missing) == 0 {
		return nil
	}
	recs, err := st.load(ctx, missing)
	if err != nil {
		return fmt.Errorf("txn: load %d state records: %w", len(missing), err)
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for i, k := range missing {
		if i >= len(recs) {
			break
		}
		s, ok := st.slots[k]
		switch {
		case !ok:
			st.slots[k] = newSlot(k, recs[i])
		case !s.dirty && (s.version != recs[i].Version || s.token != recs[i].Token):
			fresh := newSlot(k, recs[i])
			fresh.codec, fresh.lane, fresh.epoch = s.codec, s.lane, s.epoch
			st.slots[k] = fresh
		}
	}
	return nil
}

func (st *States) slot(ctx context.Context, name, key string, keyed bool, codec Codec, lane int) (*Slot, error) {
	st.mu.Lock()
	k := st.key(name, key, keyed)
	s, ok := st.slots[k]
	st.mu.Unlock()
	if !ok {
		recs, err := st.load(ctx, []string{k})
		if err == nil && len(recs) != 1 {
			err = fmt.Errorf("%d records for one key", len(recs))
		}
		if err != nil {
			return nil, fmt.Errorf("txn: load state %q: %w", k, err)
		}
		s = newSlot(k, recs[0])
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if cur, ok := st.slots[k]; ok {
		s = cur
	} else {
		st.slots[k] = s
	}
	if s.epoch == st.epoch && s.lane != lane {
		return nil, fmt.Errorf("%w: %q", ErrLaneConflict, k)
	}
	s.epoch, s.lane, s.codec = st.epoch, lane, codec
	return s, nil
}

// Write is one state record to write in a commit.
type Write struct {
	Key     string
	Version int64  // the version the changes were based on (the script checks it)
	Token   string // the token of that version (the script checks it too)
	Data    []byte
	LastID  string
	gen     uint64
}

// Dirty returns the records changed since the last commit, in the order
// they were first changed, encoding first what Seal left unencoded (see
// EncodeBatch, whose error it returns).
func (st *States) Dirty() ([]Write, error) {
	if err := st.EncodeBatch(); err != nil {
		return nil, err
	}
	w := make([]Write, len(st.dirty))
	for i, s := range st.dirty {
		w[i] = Write{Key: s.Key, Version: s.version, Token: s.token, Data: s.blob, LastID: s.lastID, gen: s.gen}
	}
	return w, nil
}

// Committed records that writes (from Dirty) were committed with token:
// each record is now at its version+1 in Redis. A record changed again after
// Dirty stays dirty, based on the new version.
func (st *States) Committed(writes []Write, token string) {
	for _, w := range writes {
		s, ok := st.slots[w.Key]
		if !ok {
			continue
		}
		s.version, s.token = w.Version+1, token
		s.base, s.baseID = w.Data, w.LastID
		if s.gen == w.gen {
			s.dirty = false
		}
		if s.encGen == w.gen {
			s.encDirty = false // going back to that point is going back to a clean record
		}
	}
	keep := st.dirty[:0]
	for _, s := range st.dirty {
		if s.dirty {
			keep = append(keep, s)
		}
	}
	clear(st.dirty[len(keep):])
	st.dirty = keep
	st.trim()
}

// Rollback undoes the uncommitted changes of every record: the ones named
// in stale are forgotten (the next access reloads them: Redis holds another
// version), the others go back to the version they were read at. Call it
// when a commit was refused and nothing of it was written.
func (st *States) Rollback(stale []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, k := range stale {
		delete(st.slots, k)
	}
	for _, s := range st.dirty {
		s.blob, s.lastID, s.value, s.dirty = s.base, s.baseID, nil, false
		s.gen++
		s.agreed()
	}
	clear(st.dirty)
	st.dirty = st.dirty[:0]
	st.restore = false
}

// Discard forgets every record with uncommitted changes, so that the next
// access reloads it from Redis. Call it when a commit's outcome is unknown,
// or it may have been applied before (a refusal after a lost reply).
func (st *States) Discard() {
	for _, s := range st.dirty {
		delete(st.slots, s.Key)
	}
	clear(st.dirty)
	st.dirty = st.dirty[:0]
	st.restore = false
}

// markDirty marks s changed, its blob up to date.
func (st *States) markDirty(s *Slot) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.dirtyLocked(s)
	s.agreed()
}

// markFresh marks s changed, its blob not (deferred encoding).
func (st *States) markFresh(s *Slot) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.dirtyLocked(s)
	s.fresh = true
}

func (st *States) dirtyLocked(s *Slot) {
	s.gen++
	if !s.dirty {
		s.dirty = true
		st.dirty = append(st.dirty, s)
	}
}

func (st *States) deferEncoding() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.deferred
}

func (st *States) flagRestore() {
	st.mu.Lock()
	st.restore = true
	st.mu.Unlock()
}

// Reset forgets every record.
func (st *States) Reset() {
	clear(st.slots)
	clear(st.dirty)
	st.dirty = st.dirty[:0]
	st.restore = false
}

// Len returns the number of cached records.
func (st *States) Len() int { return len(st.slots) }

func (st *States) trim() {
	if len(st.slots) <= st.max {
		return
	}
	for k, s := range st.slots {
		if len(st.slots) <= st.max/2 {
			return
		}
		if !s.dirty {
			delete(st.slots, k)
		}
	}
}
