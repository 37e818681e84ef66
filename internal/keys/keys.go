// Package keys derives the Redis keys streamtx uses from a source stream and
// group, and computes Redis Cluster hash slots in Go.
//
// Every derived key reuses the source stream's hash tag, so that all keys of
// one commit live in the stream's slot: slot("orders") equals
// slot("stx:{orders}:orders:g:state:counter"). Components after the tag are
// escaped (':' and '%'), so different (stream, group, name, key) tuples never
// map to the same key.
package keys

import (
	"errors"
	"fmt"
	"strings"
)

// Prefix starts every key streamtx derives.
const Prefix = "stx:"

// Tag returns the part of key that Redis Cluster hashes: the content of the
// first non-empty {…} section, or the whole key.
func Tag(key string) string {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			return key[i+1 : i+1+j]
		}
	}
	return key
}

// Slot returns the Redis Cluster hash slot of key (CRC16/XMODEM of its tag,
// modulo 16384).
func Slot(key string) int {
	return int(crc16(Tag(key)) % 16384)
}

// Space is the namespace of one (stream, group): it builds every key the
// consumer of that group needs, all in the stream's hash slot.
type Space struct {
	Stream string
	Group  string
	base   string // "stx:{tag}:<stream>:<group>:"
}

// ErrNoTag is returned by NewSpace for a stream name whose slot cannot be
// shared by a derived key.
var ErrNoTag = errors.New("stream name has a '}' but no {hash tag}: derived keys cannot share its slot")

// NewSpace returns the namespace of stream and group. It fails when the
// stream's hash tag cannot be embedded in another key (a name with '}' and no
// valid {tag}), or when a name is empty.
func NewSpace(stream, group string) (Space, error) {
	if stream == "" || group == "" {
		return Space{}, errors.New("keys: empty stream or group")
	}
	tag := Tag(stream)
	if strings.ContainsRune(tag, '}') {
		return Space{}, fmt.Errorf("keys: stream %q: %w", stream, ErrNoTag)
	}
	var b strings.Builder
	b.WriteString(Prefix)
	b.WriteByte('{')
	b.WriteString(tag)
	b.WriteString("}:")
	b.WriteString(escape(stream))
	b.WriteByte(':')
	b.WriteString(escape(group))
	b.WriteByte(':')
	return Space{Stream: stream, Group: group, base: b.String()}, nil
}

// Base returns the common prefix of every key of the space.
func (s Space) Base() string { return s.base }

// State returns the key of the single state record called name.
func (s Space) State(name string) string {
	return s.base + "state:" + escape(name)
}

// KeyedState returns the key of the state record called name for entity key.
func (s Space) KeyedState(name, key string) string {
	return s.base + "kstate:" + escape(name) + ":" + escape(key)
}

// Offsets returns the hash of committed offsets, one field per consumer.
func (s Space) Offsets() string { return s.base + "offsets" }

// Outbox returns the stream that holds publishes for other cluster slots
// until a relay forwards them.
func (s Space) Outbox() string { return s.base + "outbox" }

// Forwarded returns the key, in target's slot, that records that the outbox
// entry id of outbox was forwarded to target.
func Forwarded(target, outbox, id string) (string, error) {
	tag := Tag(target)
	if strings.ContainsRune(tag, '}') {
		return "", fmt.Errorf("keys: target %q: %w", target, ErrNoTag)
	}
	return Prefix + "{" + tag + "}:fwd:" + escape(target) + ":" + escape(outbox) + ":" + id, nil
}

// Suspect returns the counter of the times entry id was handled alone
// without the process living to finish it (see "Only the guilty entry is
// dead-lettered" in the package streamtx docs).
func (s Space) Suspect(id string) string { return s.base + "suspect:" + id }

// Commits returns the commit record of the partition this space's stream
// is, for this space's group: "<sequence> <token>" of its last commit.
func (s Space) Commits() string { return s.base + "commits" }

// Lease returns the lease record of the partition this space's stream is,
// for this space's group (see lua/lease.lua).
func (s Space) Lease() string { return s.base + "lease" }

// LastRead returns the record of a partition's last read (see
// lua/read.lua): what it delivered, under its token.
func (s Space) LastRead() string { return s.base + "lastread" }

// Members returns the membership sorted set of group on topic (see
// lua/members.lua), in the slot of the topic's metadata record.
func Members(topic, group string) string {
	return Prefix + "{" + topic + "}:topic:" + escape(group) + ":members"
}

// DeadLetters returns the default dead-letter stream.
func (s Space) DeadLetters() string { return s.base + "dlq" }

// escape makes a component unambiguous inside a ':'-separated key.
func escape(s string) string {
	if !strings.ContainsAny(s, ":%") {
		return s
	}
	r := strings.NewReplacer("%", "%25", ":", "%3A")
	return r.Replace(s)
}

// crc16 is CRC-16/XMODEM (polynomial 0x1021), the checksum Redis Cluster uses.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for b := 0; b < 8; b++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
