package sticky_test

import (
	"fmt"

	"github.com/streamtx/streamtx/internal/sticky"
)

func ExampleAssign() {
	// Two members own 6 partitions; c joins.
	current := sticky.Assignment{"a", "a", "a", "b", "b", "b"}
	members := []string{"a", "b", "c"}
	target := sticky.Assign(6, members, current)
	fmt.Println(target)

	// a and b each release one partition; c waits for them, then acquires.
	fmt.Printf("%+v\n", sticky.Plan("a", members, current, target))
	fmt.Printf("%+v\n", sticky.Plan("c", members, current, target))
	// Output:
	// [a a c b b c]
	// {Release:[2] Acquire:[] Wait:[]}
	// {Release:[] Acquire:[] Wait:[2 5]}
}
