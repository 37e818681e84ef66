package partition_test

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/keys"
	"github.com/streamtx/streamtx/internal/partition"
)

// Kafka's own vectors (UtilsTest.testMurmur2 in the Java client): keys
// partitioned by streamtx land where Kafka's default partitioner puts them.
func TestHashKafkaVectors(t *testing.T) {
	for key, want := range map[string]int32{
		"21":                         -973932308,
		"foobar":                     -790332482,
		"a-little-bit-long-string":   -985981536,
		"a-little-bit-longer-string": -1486304829,
		"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
		"abc": 479470107,
	} {
		assert.Equal(t, want, int32(partition.Hash(key)), "murmur2(%q)", key)
	}
}

// The partitioner never changes: a change would move keys of existing
// topics to other partitions and break per-key order across the upgrade.
func TestPartitionPinned(t *testing.T) {
	for _, c := range []struct {
		key         string
		hash        uint32
		p1, p8, p12 int
	}{
		{"", 275646681, 0, 1, 9},
		{"a", 2731586172, 0, 4, 4},
		{"order-1", 1221710326, 0, 6, 10},
		{"order-2", 3239468291, 0, 3, 3},
		{"customer:42", 3620647633, 0, 1, 5},
		{"ünïcode", 3406400901, 0, 5, 1},
		{"a-little-bit-long-string", 3308985760, 0, 0, 8},
	} {
		assert.Equal(t, c.hash, partition.Hash(c.key), "Hash(%q)", c.key)
		assert.Equal(t, c.p1, partition.Of(c.key, 1), "Of(%q, 1)", c.key)
		assert.Equal(t, c.p8, partition.Of(c.key, 8), "Of(%q, 8)", c.key)
		assert.Equal(t, c.p12, partition.Of(c.key, 12), "Of(%q, 12)", c.key)
	}
}

// 10,000 keys of three common shapes spread evenly over P partitions. The
// statistic Σ (observed − expected)² / expected follows a chi-square law
// with P−1 degrees of freedom for a uniform hash; the bound is that law's
// 1 − 10⁻⁶ quantile (Wilson–Hilferty approximation, z = 4.75), so a good
// hash fails it for about one key set in a million. The keys are fixed, so
// the test is deterministic: it guards against a partitioner that clusters
// structured keys (FNV-1a modulo a power of two would: its low bits depend
// only on the keys' low bits).
func TestPartitionSpread(t *testing.T) {
	const n = 10000
	shapes := map[string]func(i int) string{
		"order-%d":   func(i int) string { return fmt.Sprintf("order-%d", i) },
		"user:%08d":  func(i int) string { return fmt.Sprintf("user:%08d", i) },
		"uuid-like":  func(i int) string { return fmt.Sprintf("%08x-0000-4000-8000-%012x", i*2654435761%(1<<32), i) },
		"one letter": func(i int) string { return strings.Repeat(string(rune('a'+i%26)), 1+i/26) },
	}
	for name, key := range shapes {
		for _, p := range []int{2, 3, 4, 8, 12, 16, 64, 100} {
			counts := make([]int, p)
			for i := 0; i < n; i++ {
				q := partition.Of(key(i), p)
				require.True(t, q >= 0 && q < p, "Of(%q, %d) = %d", key(i), p, q)
				counts[q]++
			}
			exp := float64(n) / float64(p)
			chi2 := 0.0
			for _, c := range counts {
				chi2 += (float64(c) - exp) * (float64(c) - exp) / exp
			}
			df := float64(p - 1)
			a := 2 / (9 * df)
			bound := df * math.Pow(1-a+4.75*math.Sqrt(a), 3)
			assert.Less(t, chi2, bound, "%s over %d partitions: counts %v", name, p, counts)
		}
	}
}

func TestStreamNames(t *testing.T) {
	m, err := partition.New("orders", 12, "")
	require.NoError(t, err)
	assert.Equal(t, "orders:{orders.p0}", m.Stream(0))
	assert.Equal(t, "orders:{orders.p11}", m.Stream(11))
	assert.Equal(t, "", m.Stream(12))
	assert.Equal(t, "", m.Stream(-1))
	assert.Equal(t, "stx:{orders}:topic", partition.MetaKey("orders"))

	c, err := partition.New("payments", 12, "orders")
	require.NoError(t, err)
	assert.Equal(t, "payments:{orders.p3}", c.Stream(3))

	// The partitions of "orders" on a 3-master cluster's default slot
	// ranges (0-5460, 5461-10922, 10923-16383): every master holds some.
	masters := map[int]int{}
	for p := 0; p < 12; p++ {
		masters[keys.Slot(m.Stream(p))*3/16384]++
	}
	assert.Equal(t, map[int]int{0: 7, 1: 3, 2: 2}, masters)
}

// Partition p of topics with one co-location name and the same partition
// count share a slot; the partitions of one topic do not. Tags that differ
// only in the last digit ("x.p0" … "x.p9") never share a slot, whatever x
// (CRC16 is linear: their checksums differ by the CRC of one byte d < 16 at
// the end, whose low 14 bits are never zero), so the assertion holds for
// every test prefix.
func TestColocatedSlots(t *testing.T) {
	for _, group := range []string{"orders", "t:TestX:1a2b3c4d:orders", "ünï"} {
		a, err := partition.New("a-"+group, 8, group)
		require.NoError(t, err)
		b, err := partition.New("b-"+group, 8, group)
		require.NoError(t, err)
		plain, err := partition.New(group, 8, "")
		require.NoError(t, err)
		slots := map[int]bool{}
		for p := 0; p < 8; p++ {
			assert.Equal(t, keys.Slot(a.Stream(p)), keys.Slot(b.Stream(p)), "partition %d", p)
			assert.Equal(t, keys.Slot(a.Stream(p)), keys.Slot(plain.Stream(p)), "partition %d of the topic named like the group", p)
			slots[keys.Slot(a.Stream(p))] = true
		}
		assert.Len(t, slots, 8, "partitions of %q share slots", group)
	}
}

func TestNewRefuses(t *testing.T) {
	for _, c := range []struct {
		name, colocate string
		partitions     int
		field          string
	}{
		{"", "", 1, "name"},
		{"a{b}", "", 1, "name"},
		{"a}", "", 1, "name"},
		{"stx:orders", "", 1, "name"},
		{"\xff", "", 1, "name"},
		{strings.Repeat("n", partition.MaxNameLen+1), "", 1, "name"},
		{"orders", "", 0, "Partitions"},
		{"orders", "", -1, "Partitions"},
		{"orders", "", partition.MaxPartitions + 1, "Partitions"},
		{"orders", "{x}", 4, "Colocate"},
	} {
		_, err := partition.New(c.name, c.partitions, c.colocate)
		var fe *partition.FieldError
		require.True(t, errors.As(err, &fe), "New(%q, %d, %q): %v", c.name, c.partitions, c.colocate, err)
		assert.Equal(t, c.field, fe.Field)
	}
	_, err := partition.New(strings.Repeat("n", partition.MaxNameLen), partition.MaxPartitions, "")
	require.NoError(t, err)
}

func TestRoute(t *testing.T) {
	m, err := partition.New("orders", 8, "")
	require.NoError(t, err)
	values := map[string]any{"n": 1}
	stream, withKey, err := m.Route("order-1", values)
	require.NoError(t, err)
	assert.Equal(t, "orders:{orders.p6}", stream)
	assert.Equal(t, map[string]any{"n": 1, partition.KeyField: "order-1"}, withKey)
	assert.Equal(t, map[string]any{"n": 1}, values, "the caller's map is not modified")

	for _, c := range []struct {
		key    string
		values map[string]any
	}{
		{"", values},
		{"k", nil},
		{"k", map[string]any{partition.KeyField: "x"}},
	} {
		_, _, err := m.Route(c.key, c.values)
		assert.Error(t, err, "Route(%q, %v)", c.key, c.values)
	}
}

func TestParse(t *testing.T) {
	for _, c := range []struct {
		record     string
		partitions int
		colocate   string
	}{
		{`{"v":1,"partitions":8}`, 8, ""},
		{`{"v":1,"partitions":8,"colocate":"orders"}`, 8, "orders"},
		{` {"partitions":1024, "v":1} ` + "\n", 1024, ""},
		{`{"v":1,"partitions":2,"colocate":null}`, 2, ""},
	} {
		m, err := partition.Parse("t", []byte(c.record))
		require.NoError(t, err, c.record)
		assert.Equal(t, c.partitions, m.Partitions())
		assert.Equal(t, c.colocate, m.Colocate())
	}
	for _, bad := range []string{
		``, `null`, `{}`, `[]`, `"x"`,
		`{"v":2,"partitions":8}`,
		`{"partitions":8}`,
		`{"v":1}`,
		`{"v":1,"partitions":0}`,
		`{"v":1,"partitions":1025}`,
		`{"v":1,"partitions":8.5}`,
		`{"v":1,"partitions":"8"}`,
		`{"v":1,"partitions":8,"colocate":""}`,
		`{"v":1,"partitions":8,"colocate":"{x}"}`,
		`{"v":1,"partitions":8,"extra":true}`,
		`{"v":1,"partitions":8}{}`,
		`{"v":1,"partitions":8} x`,
		`{"v":1,"partitions":8,"colocate":"` + strings.Repeat("c", 5000) + `"}`,
	} {
		_, err := partition.Parse("t", []byte(bad))
		assert.ErrorIs(t, err, partition.ErrCorrupt, "%q", bad)
	}
	_, err := partition.Parse("{bad}", []byte(`{"v":1,"partitions":8}`))
	assert.ErrorIs(t, err, partition.ErrCorrupt)
}

func TestEncode(t *testing.T) {
	m, err := partition.New("t", 8, `a"b`)
	require.NoError(t, err)
	assert.Equal(t, `{"v":1,"partitions":8,"colocate":"a\"b"}`, m.Encode())
	m, err = partition.New("t", 3, "")
	require.NoError(t, err)
	assert.Equal(t, `{"v":1,"partitions":3}`, m.Encode())
}

// FuzzParseTopicMeta: a topic's metadata record comes from Redis. Parsing
// never panics, refuses with ErrCorrupt, and what it accepts encodes back to
// a record that parses the same.
func FuzzParseTopicMeta(f *testing.F) {
	f.Add("orders", `{"v":1,"partitions":8}`)
	f.Add("orders", `{"v":1,"partitions":8,"colocate":"orders"}`)
	f.Add("payments", `{"v":1,"partitions":1024,"colocate":"a\"b\u00e9"}`)
	f.Add("orders", `{"V":1,"Partitions":8,"partitions":9}`)
	f.Add("orders", `{"v":1,"partitions":8,"colocate":"\ud800"}`)
	f.Add("orders", `{"v":2,"partitions":8}`)
	f.Add("orders", `{"v":1,"partitions":-8}`)
	f.Add("orders", `{"v":1,"partitions":99999999999999999999}`)
	f.Add("x{y}", `{"v":1,"partitions":8}`)
	f.Add("orders", "")
	f.Fuzz(func(t *testing.T, name, record string) {
		m, err := partition.Parse(name, []byte(record))
		if err != nil {
			if !errors.Is(err, partition.ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		if m.Partitions() < 1 || m.Partitions() > partition.MaxPartitions || m.Name() != name {
			t.Fatalf("accepted %d partitions, name %q", m.Partitions(), m.Name())
		}
		again, err := partition.Parse(name, []byte(m.Encode()))
		if err != nil {
			t.Fatalf("re-encoded %q does not parse: %v", m.Encode(), err)
		}
		if again.Partitions() != m.Partitions() || again.Colocate() != m.Colocate() {
			t.Fatalf("%q parsed as (%d, %q), re-encoded %q as (%d, %q)",
				record, m.Partitions(), m.Colocate(), m.Encode(), again.Partitions(), again.Colocate())
		}
		for p := 0; p < m.Partitions(); p++ {
			if keys.Tag(m.Stream(p)) == m.Stream(p) || strings.Count(m.Stream(p), "{") != 1 {
				t.Fatalf("partition %d stream %q has no hash tag of its own", p, m.Stream(p))
			}
		}
	})
}
