package sticky_test

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/sticky"
)

// a builds an assignment from a compact form: one letter per partition, '.'
// for no owner.
func a(s string) sticky.Assignment {
	out := make(sticky.Assignment, len(s))
	for i, c := range s {
		if c != '.' {
			out[i] = string(c)
		}
	}
	return out
}

func TestAssign(t *testing.T) {
	for _, tc := range []struct {
		name       string
		partitions int
		members    []string
		prev       sticky.Assignment
		want       sticky.Assignment
	}{
		{"no partitions", 0, []string{"a"}, nil, a("")},
		{"negative partitions", -3, []string{"a"}, a("aaa"), a("")},
		{"no members", 3, nil, a("abc"), a("...")},
		{"only empty IDs", 2, []string{"", ""}, a("ab"), a("..")},
		{"fresh: contiguous, extras to lower IDs", 8, []string{"a", "b", "c"}, nil, a("aaabbbcc")},
		{"one member takes all", 4, []string{"x"}, a("ab.c"), a("xxxx")},
		{"balanced and present: unchanged", 7, []string{"a", "b", "c"}, a("cabcaba"), a("cabcaba")},
		{"leave moves only the leaver's", 6, []string{"a", "c"}, a("abcabc"), a("aacacc")},
		{"join takes P/N from the largest", 6, []string{"a", "b", "c"}, a("aaabbb"), a("aacbbc")},
		{"extra goes to the largest previous owner", 5, []string{"a", "b"}, a("abbb."), a("abbba")},
		{"over quota keeps its lowest partitions", 4, []string{"a", "b"}, a("aaaa"), a("aabb")},
		{"gone owners and unowned are dealt", 6, []string{"a", "b"}, a("x.yazb"), a("aababb")},
		{"more members than partitions", 2, []string{"d", "c", "b", "a"}, a("d."), a("da")},
		{"prev longer than partitions", 2, []string{"a", "b"}, a("bbaaaa"), a("ba")},
		{"prev shorter than partitions", 4, []string{"a", "b"}, a("b"), a("baab")},
		{"unsorted duplicate members", 4, []string{"b", "", "a", "b"}, nil, a("aabb")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev := slices.Clone(tc.prev)
			got := sticky.Assign(tc.partitions, tc.members, tc.prev)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, prev, tc.prev, "prev modified")
		})
	}
}

func TestPlan(t *testing.T) {
	members := []string{"a", "b", "c"}
	current := a("aab.xcc")
	target := a("abbccca")
	for _, tc := range []struct {
		member string
		want   sticky.Handover
	}{
		{"a", sticky.Handover{Release: []int{1}, Wait: []int{6}}},
		{"b", sticky.Handover{Wait: []int{1}}},
		{"c", sticky.Handover{Release: []int{6}, Acquire: []int{3, 4}}},
		{"x", sticky.Handover{Release: []int{4}}}, // not a member: releases what it still holds
		{"d", sticky.Handover{}},                  // not a member, holds nothing
		{"", sticky.Handover{}},                   // never a member
	} {
		t.Run(tc.member, func(t *testing.T) {
			assert.Equal(t, tc.want, sticky.Plan(tc.member, members, current, target))
		})
	}
	t.Run("leaving member releases all", func(t *testing.T) {
		target := sticky.Assign(len(current), []string{"b", "c"}, current)
		assert.Equal(t, sticky.Handover{Release: []int{0, 1}}, sticky.Plan("a", []string{"b", "c"}, current, target))
	})
	t.Run("current longer than target is ignored", func(t *testing.T) {
		assert.Equal(t, sticky.Handover{Release: []int{1}}, sticky.Plan("a", []string{"b"}, a("ba.aa"), a("bb")))
	})
}

// checkValid asserts the invariants of any Assign result.
func checkValid(t testing.TB, partitions int, members []string, got sticky.Assignment) {
	t.Helper()
	present := map[string]bool{}
	for _, m := range members {
		if m != "" {
			present[m] = true
		}
	}
	require.Len(t, got, max(partitions, 0))
	counts := map[string]int{}
	for m := range present {
		counts[m] = 0
	}
	for p, owner := range got {
		if len(present) == 0 {
			require.Emptyf(t, owner, "partition %d owned with no members", p)
			continue
		}
		require.Truef(t, present[owner], "partition %d owned by %q, not a member", p, owner)
		counts[owner]++
	}
	if len(counts) > 0 {
		ns := slices.Collect(maps.Values(counts))
		require.LessOrEqualf(t, slices.Max(ns)-slices.Min(ns), 1, "unbalanced: %v", counts)
	}
}

// moves counts the partitions whose owner differs between prev and next.
func moves(prev, next sticky.Assignment) int {
	n := 0
	for p, owner := range next {
		if p >= len(prev) || prev[p] != owner {
			n++
		}
	}
	return n
}

// oracleMinMoves enumerates every assignment of partitions to members (each
// member capped at ⌈P/N⌉, which no balanced assignment exceeds), keeps the
// balanced ones and returns the fewest moves from prev among them.
func oracleMinMoves(partitions int, members []string, prev sticky.Assignment) int {
	ids := slices.Compact(slices.Sorted(slices.Values(slices.DeleteFunc(slices.Clone(members), func(m string) bool { return m == "" }))))
	if len(ids) == 0 {
		return moves(prev, make(sticky.Assignment, partitions))
	}
	limit := (partitions + len(ids) - 1) / len(ids)
	cur := make(sticky.Assignment, partitions)
	counts := make([]int, len(ids))
	best := partitions + 1
	var walk func(p int)
	walk = func(p int) {
		if p == partitions {
			if slices.Max(counts)-slices.Min(counts) <= 1 {
				best = min(best, moves(prev, cur))
			}
			return
		}
		for i, id := range ids {
			if counts[i] < limit {
				counts[i]++
				cur[p] = id
				walk(p + 1)
				counts[i]--
			}
		}
	}
	walk(0)
	return best
}

// randomCase draws a partition count, members (unsorted, maybe repeated or
// empty) and a previous assignment naming present members, gone members, no
// one, and partitions beyond the count.
func randomCase(rng *rand.Rand, maxP, maxN int) (int, []string, sticky.Assignment) {
	partitions := rng.IntN(maxP + 1)
	pool := []string{"m0", "m1", "m2", "m3", "m4", "m5", "m6"}
	rng.Shuffle(len(pool), func(i, j int) { pool[i], pool[j] = pool[j], pool[i] })
	members := slices.Clone(pool[:rng.IntN(maxN+1)])
	if len(members) > 0 && rng.IntN(4) == 0 {
		members = append(members, members[0], "") // duplicates and "" are ignored
	}
	prev := make(sticky.Assignment, partitions+rng.IntN(3))
	for p := range prev {
		if k := rng.IntN(len(pool) + 1); k < len(pool) {
			prev[p] = pool[k]
		}
	}
	return partitions, members, prev
}

// TestAssignOptimalRandom checks balance and minimal movement against the
// brute-force oracle on random inputs with P ≤ 8, N ≤ 4.
func TestAssignOptimalRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		partitions, members, prev := randomCase(rng, 8, 4)
		got := sticky.Assign(partitions, members, prev)
		checkValid(t, partitions, members, got)
		require.Equalf(t, oracleMinMoves(partitions, members, prev), moves(prev, got),
			"P=%d members=%q prev=%q got=%q", partitions, members, prev, got)
	}
}

// TestAssignOptimalExhaustive checks every previous assignment of up to 4
// partitions over owners {none, a, b, c, x} for every set of members drawn
// from {a, b, c}.
func TestAssignOptimalExhaustive(t *testing.T) {
	owners := []string{"", "a", "b", "c", "x"}
	cases := 0
	for partitions := 0; partitions <= 4; partitions++ {
		for set := 0; set < 8; set++ {
			var members []string
			for i, m := range []string{"a", "b", "c"} {
				if set&(1<<i) != 0 {
					members = append(members, m)
				}
			}
			prev := make(sticky.Assignment, partitions)
			var walk func(p int)
			walk = func(p int) {
				if p < partitions {
					for _, o := range owners {
						prev[p] = o
						walk(p + 1)
					}
					return
				}
				cases++
				got := sticky.Assign(partitions, members, prev)
				checkValid(t, partitions, members, got)
				require.Equalf(t, oracleMinMoves(partitions, members, prev), moves(prev, got),
					"members=%q prev=%q got=%q", members, prev, got)
			}
			walk(0)
		}
	}
	t.Logf("%d cases", cases)
}

// TestAssignDeterministic: member order, duplicates and "" do not change the
// result, and a result fed back in is kept as it is.
func TestAssignDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for range 2000 {
		partitions, members, prev := randomCase(rng, 40, 7)
		want := sticky.Assign(partitions, members, prev)
		shuffled := append(slices.Clone(members), members...)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		require.Equal(t, want, sticky.Assign(partitions, shuffled, slices.Clone(prev)))
		require.Equal(t, want, sticky.Assign(partitions, members, want), "stable input moved")
	}
}

// TestAssignJoinLeave runs random membership changes from a stable group: a
// leave moves exactly the leaver's partitions, a join moves exactly P/(N+1),
// all to the joiner, and a repeated round moves nothing.
func TestAssignJoinLeave(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for run := range 50 {
		partitions := 1 + rng.IntN(64)
		members := []string{"j0"}
		cur := sticky.Assign(partitions, members, nil)
		for step := range 100 {
			joining := len(members) == 0 || (len(members) < 20 && rng.IntN(2) == 0)
			var who string
			if joining {
				who = fmt.Sprintf("j%d.%d", run, step)
				members = append(members, who)
			} else {
				i := rng.IntN(len(members))
				who = members[i]
				members = slices.Delete(members, i, i+1)
			}
			next := sticky.Assign(partitions, members, cur)
			checkValid(t, partitions, members, next)
			if joining {
				require.Equal(t, partitions/len(members), moves(cur, next), "join of %s", who)
				for p := range next {
					if next[p] != cur[p] {
						require.Equal(t, who, next[p])
					}
				}
			} else {
				for p := range next {
					require.Equal(t, cur[p] == who, next[p] != cur[p], "leave of %s, partition %d", who, p)
				}
			}
			require.Equal(t, next, sticky.Assign(partitions, members, next))
			cur = next
		}
	}
}

// TestPlanConverges applies every member's Plan in rounds (releases, then
// acquisitions) from random current owners: a partition is only ever acquired
// when free or held by a gone member, by one member at a time, and the owners
// reach the target within two rounds.
func TestPlanConverges(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	for range 1000 {
		partitions, members, current := randomCase(rng, 32, 6)
		target := sticky.Assign(partitions, members, current)
		current = current[:partitions]
		present := map[string]bool{}
		for _, m := range members {
			present[m] = m != ""
		}
		everyone := []string{"m0", "m1", "m2", "m3", "m4", "m5", "m6"} // gone members plan too
		for round := 0; ; round++ {
			if slices.Equal(current, target) {
				break
			}
			require.Less(t, round, 2, "not converged: current=%q target=%q", current, target)
			plans := map[string]sticky.Handover{}
			for _, m := range everyone {
				plans[m] = sticky.Plan(m, members, current, target)
			}
			acquiredBy := map[int]string{}
			for _, m := range everyone {
				for _, p := range plans[m].Acquire {
					require.True(t, current[p] == "" || !present[current[p]], "acquire of a held partition")
					require.NotContains(t, acquiredBy, p, "two acquirers")
					acquiredBy[p] = m
				}
			}
			for _, m := range everyone {
				for _, p := range plans[m].Release {
					require.Equal(t, m, current[p])
					current[p] = ""
				}
			}
			for p, m := range acquiredBy {
				current[p] = m
			}
		}
	}
}

func FuzzAssign(f *testing.F) {
	f.Add(8, "a,b,c", "a,a,b,,x,c,c,c,c,z")
	f.Add(-1, "", "")
	f.Add(3, ",,a,a", "a,b,c,d,e")
	f.Add(1000, "b,a", ",,,")
	f.Fuzz(func(t *testing.T, partitions int, membersCSV, prevCSV string) {
		partitions %= 2048 // keeps memory bounded; negative counts stay
		members := strings.Split(membersCSV, ",")
		prev := sticky.Assignment(strings.Split(prevCSV, ","))
		got := sticky.Assign(partitions, members, prev)
		checkValid(t, partitions, members, got)
		slices.Reverse(members)
		require.Equal(t, got, sticky.Assign(partitions, members, prev))
		require.Equal(t, got, sticky.Assign(partitions, members, got))
		for _, m := range append(members, prev...) {
			h := sticky.Plan(m, members, prev, got)
			for _, ps := range [][]int{h.Release, h.Acquire, h.Wait} {
				for _, p := range ps {
					require.True(t, p >= 0 && p < len(got))
				}
			}
		}
	})
}

// benchInput is a balanced assignment of P=1024 over 64 members, with one
// member gone and one new: the common rebalance.
func benchInput() (int, []string, sticky.Assignment) {
	const partitions, n = 1024, 64
	members := make([]string, n)
	for i := range members {
		members[i] = fmt.Sprintf("member-%02d", i)
	}
	prev := sticky.Assign(partitions, members, nil)
	members[17] = "member-new"
	return partitions, members, prev
}

func BenchmarkAssign(b *testing.B) {
	partitions, members, prev := benchInput()
	b.ReportAllocs()
	for b.Loop() {
		sticky.Assign(partitions, members, prev)
	}
}

func BenchmarkPlan(b *testing.B) {
	partitions, members, prev := benchInput()
	target := sticky.Assign(partitions, members, prev)
	b.ReportAllocs()
	for b.Loop() {
		sticky.Plan("member-new", members, prev, target)
	}
}
