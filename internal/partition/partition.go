// Package partition holds what every part of streamtx must agree on about a
// partitioned topic: the partitioner (which partition a key goes to), the
// names of the partition streams, the reserved field that carries an entry's
// key, and the topic's metadata record in Redis.
//
// # Partitioner
//
// Partition p of a key is Kafka's default keyed partitioner: the 32-bit
// MurmurHash2 of the key's bytes (seed 0x9747b28c, as in the Java client's
// org.apache.kafka.common.utils.Utils.murmur2), its sign bit cleared, modulo
// the number of partitions. The function is fixed: changing it would move
// keys between partitions of existing topics and break per-key order, so
// tests pin it to Kafka's own vectors and to fixed partitions.
//
// # Names
//
// The metadata record of topic T is the string key "stx:{T}:topic". Partition
// p of T is the stream "T:{C.p<p>}" ("orders:{orders.p3}"), where C is the
// topic's co-location name, or T itself when it has none. The hash tag {C.pN}
// gives each partition a slot of its own, so partitions spread over a cluster,
// and gives partition p of every topic with co-location name C the same slot.
package partition

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode/utf8"
)

// KeyField is the entry field that carries the key of an entry published by
// key (Producer.PublishKeyed, tx.PublishKeyed). It is reserved: values passed
// to a keyed publish may not hold it.
const KeyField = "stx.key"

// MaxPartitions bounds a topic's partition count.
const MaxPartitions = 1024

// MaxNameLen bounds the length in bytes of a topic name and of a co-location
// name.
const MaxNameLen = 200

// ErrNotFound is returned when a topic has no metadata record.
var ErrNotFound = errors.New("streamtx: topic not found")

// ErrCorrupt is returned for a metadata record that does not parse.
var ErrCorrupt = errors.New("streamtx: topic metadata record is corrupt")

// Hash is the 32-bit MurmurHash2 of key as Kafka's Java client computes it
// (Utils.murmur2): seed 0x9747b28c, little-endian 4-byte blocks.
func Hash(key string) uint32 {
	const (
		seed = 0x9747b28c
		m    = 0x5bd1e995
		r    = 24
	)
	h := uint32(seed) ^ uint32(len(key))
	i := 0
	for ; i+4 <= len(key); i += 4 {
		k := uint32(key[i]) | uint32(key[i+1])<<8 | uint32(key[i+2])<<16 | uint32(key[i+3])<<24
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(key) - i {
	case 3:
		h ^= uint32(key[i+2]) << 16
		fallthrough
	case 2:
		h ^= uint32(key[i+1]) << 8
		fallthrough
	case 1:
		h ^= uint32(key[i])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}

// Of returns the partition of key among n partitions (n ≥ 1): Hash(key)
// with its sign bit cleared, modulo n — Kafka's default partitioner for a
// keyed record.
func Of(key string, n int) int {
	return int(Hash(key)&0x7fffffff) % n
}

// CheckName reports why s cannot name a topic or a co-location group: it is
// empty, longer than MaxNameLen, not UTF-8, or holds a brace (the partition
// streams' hash tags would no longer be theirs).
func CheckName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > MaxNameLen:
		return fmt.Errorf("%d bytes long, more than %d", len(s), MaxNameLen)
	case !utf8.ValidString(s):
		return errors.New("not valid UTF-8")
	case strings.ContainsAny(s, "{}"):
		return fmt.Errorf("%q holds a brace", s)
	}
	return nil
}

// MetaKey returns the key of topic name's metadata record, "stx:{name}:topic".
// No other key streamtx derives has this form: those have more components
// after the hash tag.
func MetaKey(name string) string { return "stx:{" + name + "}:topic" }

// StreamName returns the stream of partition p of topic name with
// co-location name colocate ("" for none): "name:{colocate.pN}", or
// "name:{name.pN}".
func StreamName(name, colocate string, p int) string {
	if colocate == "" {
		colocate = name
	}
	return name + ":{" + colocate + ".p" + strconv.Itoa(p) + "}"
}

// Meta is a topic: its name and the content of its metadata record.
// It is immutable.
type Meta struct {
	name       string
	colocate   string
	partitions int
	streams    []string
}

// New checks a topic's name, partition count and co-location name ("" for
// none) and returns the topic. Its error is a *FieldError naming the
// argument at fault.
func New(name string, partitions int, colocate string) (*Meta, error) {
	if err := CheckName(name); err != nil {
		return nil, &FieldError{"name", err.Error()}
	}
	if strings.HasPrefix(name, "stx:") {
		return nil, &FieldError{"name", fmt.Sprintf("%q starts with stx:, the prefix of streamtx's own keys", name)}
	}
	if partitions < 1 || partitions > MaxPartitions {
		return nil, &FieldError{"Partitions", fmt.Sprintf("%d is not between 1 and %d", partitions, MaxPartitions)}
	}
	if colocate != "" {
		if err := CheckName(colocate); err != nil {
			return nil, &FieldError{"Colocate", err.Error()}
		}
	}
	m := &Meta{name: name, colocate: colocate, partitions: partitions, streams: make([]string, partitions)}
	for p := range m.streams {
		m.streams[p] = StreamName(name, colocate, p)
	}
	return m, nil
}

// FieldError is New's error: Field is "name", "Partitions" or "Colocate".
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Name returns the topic's name.
func (m *Meta) Name() string { return m.name }

// Partitions returns the partition count.
func (m *Meta) Partitions() int { return m.partitions }

// Colocate returns the co-location name, "" for none.
func (m *Meta) Colocate() string { return m.colocate }

// PartitionOf returns the partition of key.
func (m *Meta) PartitionOf(key string) int { return Of(key, m.partitions) }

// Stream returns the stream of partition p, or "" when p is out of range.
func (m *Meta) Stream(p int) string {
	if p < 0 || p >= len(m.streams) {
		return ""
	}
	return m.streams[p]
}

// Route returns the stream that key's entry goes to, and values with the key
// added under KeyField (a copy: values is not modified). It refuses an empty
// key and values that hold KeyField.
func (m *Meta) Route(key string, values map[string]any) (string, map[string]any, error) {
	if key == "" {
		return "", nil, errors.New("empty key")
	}
	if _, ok := values[KeyField]; ok {
		return "", nil, fmt.Errorf("field %q is reserved for the key", KeyField)
	}
	if len(values) == 0 {
		return "", nil, errors.New("no values")
	}
	withKey := make(map[string]any, len(values)+1)
	for k, v := range values {
		withKey[k] = v
	}
	withKey[KeyField] = key
	return m.streams[m.PartitionOf(key)], withKey, nil
}

// Format version of the metadata record.
const version = 1

// maxRecordLen bounds a metadata record: a valid one is far shorter.
const maxRecordLen = 4096

// record is what Parse decodes: the JSON of a metadata record, for example
// {"v":1,"partitions":8,"colocate":"orders"}. Pointers tell a missing field
// from a zero one.
type record struct {
	V          *int    `json:"v"`
	Partitions *int    `json:"partitions"`
	Colocate   *string `json:"colocate"`
}

// Encode returns m's metadata record.
func (m *Meta) Encode() string {
	s := `{"v":` + strconv.Itoa(version) + `,"partitions":` + strconv.Itoa(m.partitions)
	if m.colocate != "" {
		q, _ := json.Marshal(m.colocate) // a string always encodes
		s += `,"colocate":` + string(q)
	}
	return s + "}"
}

// Parse reads the metadata record b of topic name. Every error wraps
// ErrCorrupt: b is not one JSON object with exactly the fields "v" (1),
// "partitions" (1 to MaxPartitions) and optionally "colocate" (a valid
// name), or name is not a valid topic name.
func Parse(name string, b []byte) (*Meta, error) {
	if len(b) > maxRecordLen {
		return nil, fmt.Errorf("%w: %q: %d bytes", ErrCorrupt, MetaKey(name), len(b))
	}
	var r record
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrCorrupt, MetaKey(name), err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: %q: data after the JSON object", ErrCorrupt, MetaKey(name))
	}
	switch {
	case r.V == nil:
		return nil, fmt.Errorf("%w: %q: no format version", ErrCorrupt, MetaKey(name))
	case *r.V != version:
		return nil, fmt.Errorf("%w: %q: format version %d, this streamtx reads %d", ErrCorrupt, MetaKey(name), *r.V, version)
	case r.Partitions == nil:
		return nil, fmt.Errorf("%w: %q: no partitions", ErrCorrupt, MetaKey(name))
	}
	colocate := ""
	if r.Colocate != nil {
		if *r.Colocate == "" {
			return nil, fmt.Errorf("%w: %q: empty colocate", ErrCorrupt, MetaKey(name))
		}
		colocate = *r.Colocate
	}
	m, err := New(name, *r.Partitions, colocate)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %v", ErrCorrupt, MetaKey(name), err)
	}
	return m, nil
}
