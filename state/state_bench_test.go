package state_test

import (
	"strconv"
	"testing"

	"github.com/streamtx/streamtx/state"
)

// benchCounter is the smallest useful state: one counter.
type benchCounter struct {
	N int64
}

// benchOrder is a medium state (about 600 bytes of msgpack): a few scalars,
// a slice of structs, a map and a slice of strings.
type benchOrder struct {
	ID        string
	Customer  string
	Status    string
	Items     []benchItem
	Totals    map[string]int64
	Tags      []string
	UpdatedMS int64
	Version   int
	Closed    bool
}

type benchItem struct {
	SKU   string
	Qty   int
	Price float64
	Note  string
}

func benchMedium() *benchOrder {
	o := &benchOrder{
		ID:        "order-000123456",
		Customer:  "customer-98765",
		Status:    "paid",
		Totals:    map[string]int64{},
		Tags:      []string{"priority", "gift", "eu-west", "promo-2024"},
		UpdatedMS: 1700000000123,
		Version:   42,
	}
	for i := range 10 {
		o.Items = append(o.Items, benchItem{
			SKU:   "sku-" + strconv.Itoa(10000+i),
			Qty:   i + 1,
			Price: 9.99 + float64(i),
			Note:  "note " + strconv.Itoa(i),
		})
	}
	for _, k := range []string{"net", "tax", "shipping", "discount", "gross", "refunded", "paid", "due"} {
		o.Totals[k] = int64(len(k)) * 1234
	}
	return o
}

func BenchmarkEncode(b *testing.B) {
	b.Run("counter/msgpack", func(b *testing.B) { benchEncode(b, state.Msgpack[benchCounter](), &benchCounter{N: 123456789}) })
	b.Run("medium/msgpack", func(b *testing.B) { benchEncode(b, state.Msgpack[benchOrder](), benchMedium()) })
	b.Run("counter/json", func(b *testing.B) { benchEncode(b, state.JSON[benchCounter](), &benchCounter{N: 123456789}) })
	b.Run("medium/json", func(b *testing.B) { benchEncode(b, state.JSON[benchOrder](), benchMedium()) })
}

func BenchmarkDecode(b *testing.B) {
	b.Run("counter/msgpack", func(b *testing.B) { benchDecode(b, state.Msgpack[benchCounter](), &benchCounter{N: 123456789}) })
	b.Run("medium/msgpack", func(b *testing.B) { benchDecode(b, state.Msgpack[benchOrder](), benchMedium()) })
	b.Run("counter/json", func(b *testing.B) { benchDecode(b, state.JSON[benchCounter](), &benchCounter{N: 123456789}) })
	b.Run("medium/json", func(b *testing.B) { benchDecode(b, state.JSON[benchOrder](), benchMedium()) })
}

func benchEncode[S any](b *testing.B, c state.Codec[S], v *S) {
	b.ReportAllocs()
	var n int
	for b.Loop() {
		p, err := c.Encode(v)
		if err != nil {
			b.Fatal(err)
		}
		n = len(p)
	}
	b.ReportMetric(float64(n), "encoded-bytes")
}

func benchDecode[S any](b *testing.B, c state.Codec[S], v *S) {
	p, err := c.Encode(v)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(p)))
	for b.Loop() {
		if _, err := c.Decode(p); err != nil {
			b.Fatal(err)
		}
	}
}
