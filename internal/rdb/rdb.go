// Package rdb runs streamtx's Lua scripts and parses their replies. Replies
// come from Redis and are parsed defensively: a malformed reply is an error,
// never a panic.
package rdb

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"slices"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/record"
	"github.com/streamtx/streamtx/internal/streamid"
	"github.com/streamtx/streamtx/internal/txnengine"
)

// Return codes shared by the scripts (see the headers in lua/).
const (
	CodeOK          = 0
	CodeNotOwned    = 1
	CodeConflict    = 2
	CodeWrongType   = 3
	maxReplyEntries = 1 << 20
)

// Scripts holds the scripts, each wrapped once.
type Scripts struct {
	Commit      *redis.Script // commit.lua
	Claim       *redis.Script // claim.lua
	DeadLetter  *redis.Script // deadletter.lua
	Replay      *redis.Script // replay.lua
	DelConsumer *redis.Script // delconsumer.lua
	Suspect     *redis.Script // suspect.lua
	KeepAlive   *redis.Script // keepalive.lua
	Produce     *redis.Script // produce.lua
	Forward     *redis.Script // forward.lua
	Trim        *redis.Script // trim.lua
	Lease       *redis.Script // lease.lua
	Members     *redis.Script // members.lua
	Read        *redis.Script // read.lua (run it fenced)

	commitSrc string // for EVAL when the server does not know the script
	fenced    bool
	src       map[*redis.Script]string
}

// FencePrologue goes before a script that a partition's lease holder runs:
// it takes the lease key off the end of KEYS and the instance ID and epoch
// off the end of ARGV, and refuses (error reply ErrFenced's prefix, nothing
// written) unless the lease is held under that epoch by that instance. The
// rest of the script sees KEYS and ARGV as they were without the fence.
const FencePrologue = `local fence_key = KEYS[#KEYS]; KEYS[#KEYS] = nil
local fence_epoch = ARGV[#ARGV]; ARGV[#ARGV] = nil
local fence_owner = ARGV[#ARGV]; ARGV[#ARGV] = nil
local fence = redis.call('HMGET', fence_key, 'owner', 'epoch')
if fence[1] ~= fence_owner or fence[2] ~= fence_epoch then
  return redis.error_reply('STXFENCED lease of ' .. fence_key .. ' is not held under epoch ' .. tostring(fence_epoch))
end
`

// FencedPrefix starts the error reply of a script refused by its fence.
const FencedPrefix = "STXFENCED"

// recordWrapper runs commit.lua (as the function body) for a partition's
// lease holder, checking the partition's commit record first: the string
// "<sequence> <token>" of the last commit, which the holder knows. Another
// value means Redis lost commits (a failover, a restore): the commit is
// refused with LostPrefix. The value the commit would write (its token is
// unique) means this is the retry of this very commit, which applied and
// whose reply was lost — by go-redis's own retry too: it answers committed. The record key and the old and new values
// come off the ends of KEYS and ARGV (before the fence's, see Fence).
const recordHead = `local rec_key = KEYS[#KEYS]; KEYS[#KEYS] = nil
local rec_new = ARGV[#ARGV]; ARGV[#ARGV] = nil
local rec_old = ARGV[#ARGV]; ARGV[#ARGV] = nil
local rec_cur = redis.call('GET', rec_key) or ''
if rec_cur == rec_new then
  return {0}
end
if rec_cur ~= rec_old then
  return redis.error_reply('STXLOST commit record ' .. rec_key .. ' is "' .. rec_cur .. '", not "' .. rec_old .. '": Redis lost commits')
end
if redis.acl_check_cmd and not redis.acl_check_cmd('SET', rec_key, rec_new) then
  return redis.error_reply('NOPERM streamtx commit: this user may not run SET on key ' .. rec_key .. '; nothing was written')
end
local function commit()
`

const recordTail = `
end
local reply = commit()
if type(reply) == 'table' and reply[1] == 0 then
  redis.call('SET', rec_key, rec_new)
end
return reply
`

// LostPrefix starts the error reply of a commit whose partition's commit
// record is not the one its lease holder wrote last.
const LostPrefix = "STXLOST"

// Record is a partition's commit record, as its lease holder knows it.
type Record struct {
	Key string
	// Old is the record's value after the last commit ("" before the
	// first); New, filled by Build, what this commit writes.
	Old, New string
	Seq      int64 // the sequence number in Old
}

// Fenced returns a copy of s whose Commit, Claim, DeadLetter, KeepAlive and
// Read scripts run behind FencePrologue: their callers append the lease key
// to KEYS and the instance ID and epoch to ARGV (see Fence).
func (s *Scripts) Fenced() *Scripts {
	f := *s
	f.fenced = true
	f.commitSrc = FencePrologue + recordHead + s.commitSrc + recordTail
	f.Commit = redis.NewScript(f.commitSrc)
	for _, p := range []**redis.Script{&f.Claim, &f.DeadLetter, &f.KeepAlive, &f.Read} {
		*p = redis.NewScript(FencePrologue + s.src[*p])
	}
	return &f
}

// IsFenced reports whether s runs behind the fence.
func (s *Scripts) IsFenced() bool { return s.fenced }

// Fence is what a fenced script is given: the lease key and the holder's
// instance ID and epoch.
type Fence struct {
	Key, Owner, Epoch string
}

// Append returns keys and args with the fence added at their ends.
func (f *Fence) Append(keys []string, args []any) ([]string, []any) {
	if f == nil {
		return keys, args
	}
	return append(keys[:len(keys):len(keys)], f.Key), append(args[:len(args):len(args)], f.Owner, f.Epoch)
}

// NewScripts wraps the scripts of fsys, which holds the files of lua/ at its
// root: the root package passes its embedded copy, tests read ../../lua.
// The sources are not API: each script's header (KEYS, ARGV, return codes)
// is the contract with this package.
func NewScripts(fsys fs.FS) (*Scripts, error) {
	s := &Scripts{src: make(map[*redis.Script]string)}
	for _, f := range []struct {
		name string
		dst  **redis.Script
	}{
		{"commit.lua", &s.Commit},
		{"claim.lua", &s.Claim},
		{"deadletter.lua", &s.DeadLetter},
		{"replay.lua", &s.Replay},
		{"delconsumer.lua", &s.DelConsumer},
		{"suspect.lua", &s.Suspect},
		{"keepalive.lua", &s.KeepAlive},
		{"produce.lua", &s.Produce},
		{"forward.lua", &s.Forward},
		{"trim.lua", &s.Trim},
		{"lease.lua", &s.Lease},
		{"members.lua", &s.Members},
		{"read.lua", &s.Read},
	} {
		b, err := fs.ReadFile(fsys, f.name)
		if err != nil {
			return nil, fmt.Errorf("rdb: script %s: %w", f.name, err)
		}
		*f.dst = redis.NewScript(string(b))
		s.src[*f.dst] = string(b)
		if f.name == "commit.lua" {
			s.commitSrc = string(b)
		}
	}
	return s, nil
}

// Entry is one claimed stream entry.
type Entry struct {
	ID         string
	Deliveries int64
	Values     map[string]string
}

// Commit is the input of commit.lua.
type Commit struct {
	Stream, Offsets string
	Group, Consumer string
	IDs             []string
	Deliveries      []int64
	States          []txnengine.Write
	Publishes       []txnengine.Publish
	// Token identifies this commit; it is written into every state record.
	// Empty: Build draws a random one.
	Token string
	// Fence, when set, is appended for scripts run fenced (Scripts.Fenced),
	// and Record with it, for commit.lua.
	Fence  *Fence
	Record *Record
	// Targets lists the distinct publish streams; PubTarget[i] is the index
	// into Targets of Publishes[i]. Filled by Build.
	Targets   []string
	PubTarget []int

	cmd  []any // the whole command Build made: head, then ARGV
	keys []string
}

// Build returns the KEYS and ARGV of the commit. It refuses a commit the
// script could not apply whole: no entries, or a publish without fields or
// with an odd number of them.
//
// ARGV holds pointers into arrays Build allocates once (*string, *int64,
// []byte), so that a commit of b entries costs a handful of allocations, not
// one per argument. The arguments stay valid until the next Build.
func (c *Commit) Build() (keys []string, args []any, err error) {
	if len(c.IDs) == 0 || len(c.IDs) != len(c.Deliveries) {
		return nil, nil, fmt.Errorf("rdb: commit of %d entries with %d delivery counts", len(c.IDs), len(c.Deliveries))
	}
	nf := 0
	for _, p := range c.Publishes {
		if len(p.Fields) == 0 || len(p.Fields)%2 != 0 {
			return nil, nil, fmt.Errorf("rdb: publish to %q with %d fields and values", p.Stream, len(p.Fields))
		}
		nf += len(p.Fields)
	}
	c.Targets, c.PubTarget = c.Targets[:0], c.PubTarget[:0]
	var index map[string]int // only once there are many targets
	for _, p := range c.Publishes {
		var t int
		if index != nil {
			var ok bool
			if t, ok = index[p.Stream]; !ok {
				t = -1
			}
		} else {
			t = slices.Index(c.Targets, p.Stream)
		}
		if t < 0 {
			t = len(c.Targets)
			c.Targets = append(c.Targets, p.Stream)
			if index != nil {
				index[p.Stream] = t
			} else if len(c.Targets) > 8 {
				index = make(map[string]int, 2*len(c.Targets))
				for i, s := range c.Targets {
					index[s] = i
				}
			}
		}
		c.PubTarget = append(c.PubTarget, t)
	}
	keys = make([]string, 0, 2+len(c.States)+len(c.Targets))
	keys = append(keys, c.Stream, c.Offsets)
	for _, s := range c.States {
		keys = append(keys, s.Key)
	}
	keys = append(keys, c.Targets...)
	if c.Fence != nil {
		if c.Record == nil {
			return nil, nil, errors.New("rdb: fenced commit without a commit record")
		}
		keys = append(keys, c.Record.Key, c.Fence.Key)
	}

	if c.Token == "" {
		c.Token = NewToken()
	}
	if !record.ValidToken(c.Token) {
		return nil, nil, fmt.Errorf("rdb: commit token %q has a space or line break", c.Token)
	}
	lo, hi := c.IDs[0], c.IDs[0]
	for _, id := range c.IDs[1:] {
		if IDLess(hi, id) {
			hi = id
		}
		if IDLess(id, lo) {
			lo = id
		}
	}

	// Runs of equal delivery counts, and groups of consecutive publishes to
	// one target with one field count: usually one of each per batch.
	var ints []int64
	for i := 0; i < len(c.Deliveries); {
		j := i + 1
		for j < len(c.Deliveries) && c.Deliveries[j] == c.Deliveries[i] {
			j++
		}
		ints = append(ints, c.Deliveries[i], int64(j-i))
		i = j
	}
	nc := len(ints) / 2
	for i := 0; i < len(c.Publishes); {
		j := i + 1
		for j < len(c.Publishes) && c.PubTarget[j] == c.PubTarget[i] && len(c.Publishes[j].Fields) == len(c.Publishes[i].Fields) {
			j++
		}
		ints = append(ints, int64(j-i), int64(c.PubTarget[i]+1), int64(len(c.Publishes[i].Fields)/2))
		i = j
	}
	ng := (len(ints) - 2*nc) / 3
	// Each state record: the start of the record read, the index of its
	// last byte, the record to write.
	prefixes := make([]string, len(c.States))
	ends := make([]int64, len(c.States))
	for i, w := range c.States {
		if !record.ValidToken(w.Token) {
			return nil, nil, fmt.Errorf("rdb: state %q read with token %q", w.Key, w.Token)
		}
		if c.Record != nil {
			// A lease holder's records have no other writer, and its
			// commit record catches what Redis lost: no version check.
			prefixes[i], ends[i] = "-", 0
			continue
		}
		prefixes[i] = record.Prefix(w.Version, w.Token)
		ends[i] = int64(len(prefixes[i]) - 1)
	}
	ints = append(ints, int64(len(c.IDs)), int64(len(c.States)), int64(nc), int64(ng))

	// The command head (EVALSHA, hash, key count, keys) is left free for
	// RunCommit, which then sends this one slice as it is.
	head := 3 + len(keys)
	cmd := make([]any, head, head+9+len(c.IDs)+2*nc+3*len(c.States)+3*ng+nf)
	hdr := ints[len(ints)-4:]
	cmd = append(cmd, &c.Group, &c.Consumer, &hdr[0], &hdr[1], &hdr[2], &hdr[3], &hi, &lo, &c.Token)
	for i := range c.IDs {
		cmd = append(cmd, &c.IDs[i])
	}
	k := 0
	for ; k < 2*nc; k++ {
		cmd = append(cmd, &ints[k])
	}
	g := k
	for i := range c.States {
		w := &c.States[i]
		cmd = append(cmd, &prefixes[i], &ends[i], record.Format(w.Version+1, c.Token, w.LastID, w.Data))
	}
	for i := 0; i < len(c.Publishes); g += 3 {
		cmd = append(cmd, &ints[g], &ints[g+1], &ints[g+2])
		for r := ints[g]; r > 0; r-- {
			f := c.Publishes[i].Fields
			for x := range f {
				cmd = append(cmd, &f[x])
			}
			i++
		}
	}
	if c.Fence != nil {
		c.Record.New = strconv.FormatInt(c.Record.Seq+1, 10) + " " + c.Token
		cmd = append(cmd, &c.Record.Old, &c.Record.New, &c.Fence.Owner, &c.Fence.Epoch)
	}
	c.cmd, c.keys = cmd, keys
	return keys, cmd[head:], nil
}

// Doer sends a command as given: every go-redis client has Do.
type Doer interface {
	Do(ctx context.Context, args ...any) *redis.Cmd
}

// RunCommit runs a built commit with EVALSHA (EVAL when the server does not
// know the script), sending the slice Build made as the whole command.
func RunCommit(ctx context.Context, client Doer, s *Scripts, c *Commit) (any, error) {
	if c.cmd == nil {
		return nil, errors.New("rdb: RunCommit of a commit that was not built")
	}
	cmd := c.cmd
	cmd[0], cmd[1], cmd[2] = "evalsha", s.Commit.Hash(), len(c.keys)
	for i, k := range c.keys {
		cmd[3+i] = k
	}
	reply, err := client.Do(ctx, cmd...).Result()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		cmd[0], cmd[1] = "eval", s.commitSrc
		reply, err = client.Do(ctx, cmd...).Result()
	}
	return reply, err
}

// NewToken returns a random commit token.
func NewToken() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

// Result is a script's status reply: a code and, for refusals, the 0-based
// indexes it names.
type Result struct {
	Code  int
	Index []int
	// ID is the dead-letter entry ID, for deadletter.lua.
	ID string
}

// ParseResult parses a {code, i, …} reply. Indexes are turned 0-based.
func ParseResult(v any) (Result, error) {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return Result{}, fmt.Errorf("rdb: unexpected script reply %T", v)
	}
	code, ok := a[0].(int64)
	if !ok || code < 0 || code > CodeWrongType {
		return Result{}, fmt.Errorf("rdb: unexpected script code %v", a[0])
	}
	r := Result{Code: int(code)}
	if code == CodeOK {
		if len(a) > 1 {
			if s, ok := a[1].(string); ok {
				r.ID = s
			}
		}
		return r, nil
	}
	for _, x := range a[1:] {
		i, ok := x.(int64)
		if !ok || i < 1 || i > maxReplyEntries {
			return Result{}, fmt.Errorf("rdb: unexpected index %v in script reply", x)
		}
		r.Index = append(r.Index, int(i-1))
	}
	return r, nil
}

// ParseRead parses read.lua's flat reply: the stream's last ID when no
// entry was read, and the entries (delivery count 1).
func ParseRead(v any) (top string, entries []Entry, err error) {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return "", nil, fmt.Errorf("rdb: unexpected read reply %T", v)
	}
	if top, ok = a[0].(string); !ok {
		return "", nil, fmt.Errorf("rdb: unexpected read reply head %T", a[0])
	}
	for i := 1; i < len(a); {
		if i+1 >= len(a) {
			return "", nil, errors.New("rdb: truncated read reply")
		}
		id, ok1 := a[i].(string)
		n, ok2 := a[i+1].(int64)
		if !ok1 || !ok2 || n < 0 || n > int64(len(a)-i-2)/2 { // (no 2*n: it could overflow)
			return "", nil, errors.New("rdb: malformed entry in read reply")
		}
		vals, err := Values(a[i+2 : i+2+int(2*n)])
		if err != nil {
			return "", nil, fmt.Errorf("rdb: entry %s: %w", id, err)
		}
		if entries == nil {
			entries = make([]Entry, 0, 64)
		}
		entries = append(entries, Entry{ID: id, Deliveries: 1, Values: vals})
		i += 2 + int(2*n)
	}
	return top, entries, nil
}

// ParseClaim parses claim.lua's {next, entries, deleted} reply.
func ParseClaim(v any) (next string, entries []Entry, deleted []string, err error) {
	a, ok := v.([]any)
	if !ok || len(a) != 3 {
		return "", nil, nil, fmt.Errorf("rdb: unexpected claim reply %T", v)
	}
	if next, ok = a[0].(string); !ok {
		return "", nil, nil, fmt.Errorf("rdb: unexpected claim cursor %T", a[0])
	}
	es, ok1 := a[1].([]any)
	ds, ok2 := a[2].([]any)
	if !ok1 || !ok2 {
		return "", nil, nil, errors.New("rdb: unexpected claim reply shape")
	}
	for _, e := range es {
		en, err := parseEntry(e)
		if err != nil {
			return "", nil, nil, err
		}
		entries = append(entries, en)
	}
	for _, d := range ds {
		s, ok := d.(string)
		if !ok {
			return "", nil, nil, fmt.Errorf("rdb: unexpected deleted ID %T", d)
		}
		deleted = append(deleted, s)
	}
	return next, entries, deleted, nil
}

func parseEntry(v any) (Entry, error) {
	a, ok := v.([]any)
	if !ok || len(a) != 3 {
		return Entry{}, fmt.Errorf("rdb: unexpected claimed entry %T", v)
	}
	id, ok1 := a[0].(string)
	n, ok2 := a[1].(int64)
	fs, ok3 := a[2].([]any)
	if !ok1 || !ok2 || !ok3 || len(fs)%2 != 0 {
		return Entry{}, errors.New("rdb: malformed claimed entry")
	}
	vals, err := Values(fs)
	if err != nil {
		return Entry{}, fmt.Errorf("rdb: entry %s: %w", id, err)
	}
	return Entry{ID: id, Deliveries: n, Values: vals}, nil
}

// Values turns a flat field/value reply into a map (a repeated field keeps
// its last value).
func Values(fs []any) (map[string]string, error) {
	if len(fs)%2 != 0 {
		return nil, errors.New("odd number of field/value items")
	}
	m := make(map[string]string, len(fs)/2)
	for i := 0; i < len(fs); i += 2 {
		k, ok1 := fs[i].(string)
		v, ok2 := fs[i+1].(string)
		if !ok1 || !ok2 {
			return nil, errors.New("non-string field or value")
		}
		m[k] = v
	}
	return m, nil
}

// IDLess reports whether stream ID a sorts before b. Malformed IDs sort
// first.
func IDLess(a, b string) bool { return streamid.Less(a, b) }

// Run runs script and returns its raw reply.
func Run(ctx context.Context, c redis.Scripter, s *redis.Script, keys []string, args ...any) (any, error) {
	return s.Run(ctx, c, keys, args...).Result()
}
