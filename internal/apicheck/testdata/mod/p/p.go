// Package p covers what the API listing must show and leave out.
package p

import (
	"context"
	"io"

	"example.com/mod/p/internal/hidden"
)

// Kind is a named basic type with constants.
type Kind int

const (
	KindA Kind = iota + 1
	KindB
	kindC
)

// Name is an untyped constant.
const Name = "p"

// ErrX is an error variable.
var ErrX = io.EOF

var errY error

// F takes named parameters; the listing drops the names.
func F(ctx context.Context, n int, opts ...string) (int, error) { return 0, nil }

func f() {}

// Handler is an interface with an unexported method.
type Handler interface {
	io.Reader
	Handle(ctx context.Context) error
	seal()
}

// Number is a constraint with type terms.
type Number interface{ ~int | ~float64 }

// Base has methods promoted into T.
type Base struct{ ID string }

func (Base) Hello() string { return "" }

type inner struct{}

func (*inner) Promoted() {}

// T has exported, unexported and embedded fields.
type T struct {
	Base
	*inner
	Name   string `json:"name"`
	hidden int
	H      hidden.H
	OnDone func(err error) bool
}

func (t *T) Run(ctx context.Context) error { return nil }
func (t T) String() string                 { return "" }
func (t *T) private()                      {}

// Pair is generic.
type Pair[K comparable, V any] struct {
	Key K
	Val V
}

func (p Pair[K, V]) Swap() Pair[K, V] { return p }

// Map is a generic function.
func Map[S ~[]E, E any](s S, f func(e E) E) S { return s }

// Alias and GenericAlias are type aliases.
type (
	Alias               = Base
	GenericAlias[V any] = Pair[string, V]
)

// Sum is a generic function over a constraint.
func Sum[N Number](ns ...N) N { return 0 }

type unexported struct{ Exported int }

func (unexported) Method() {}
