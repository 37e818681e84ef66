// Package sticky computes which member of a consumer group owns each
// partition of a topic: balanced, sticky and deterministic, in pure Go.
//
// Every member computes the assignment on its own, from what it reads in
// Redis (the live members and the current owner of each partition), so the
// same input must give the same output everywhere: member IDs are sorted and
// deduplicated first, and every tie is broken by member ID, then by
// partition index. Nothing depends on map iteration or on input order.
//
// # Algorithm
//
// With P partitions and N members, a balanced assignment gives q = P/N
// partitions to every member and one more to r = P%N of them. Each member's
// previous partitions are kept up to its quota, and the r larger quotas go
// to the members that previously owned the most (ties: lower ID first); the
// partitions left over — unowned, owned by a member that is gone, or beyond
// their owner's quota — are dealt, lowest index first, to the members below
// quota, lowest ID first. A member over quota keeps its lowest-indexed
// partitions.
//
// This keeps the largest possible number of partitions in place among all
// balanced assignments (a member's extra partition only saves a move if it
// owned more than q, so the extras go to the largest owners), hence:
//
//   - an assignment that is balanced and whose owners are all present does
//     not change;
//   - a leave moves only the leaver's partitions;
//   - a join to a balanced group moves P/(N+1) partitions, all to the joiner.
//
// The cost is O(P + N log N).
//
// # Cooperative handover
//
// [Plan] tells one member what to do to move from the current owners to a
// new assignment: release the partitions it owns that now belong to another
// (stop reading, commit or drop what it holds, then release the lease),
// acquire those assigned to it that are free or held by a member that is
// gone, and wait for the others, which a present member still holds.
package sticky

import (
	"cmp"
	"slices"
)

// Assignment maps a partition index to the ID of the member that owns it;
// "" means the partition has no owner. An empty member ID is therefore never
// a member.
type Assignment []string

// Assign returns the assignment of partitions 0 … partitions-1 to members,
// staying as close to prev as balance allows.
//
// members may be in any order and may repeat; "" is ignored. prev gives the
// previous owner of each partition: entries naming a member not in members,
// entries beyond partitions-1 and missing entries (prev shorter than
// partitions) are treated as unowned. prev is not modified.
//
// The result has one entry per partition (none when partitions ≤ 0). With at
// least one member, every partition has a member of members, and the counts
// of any two members differ by at most one; with no member, every entry is "".
func Assign(partitions int, members []string, prev Assignment) Assignment {
	if partitions <= 0 {
		return Assignment{}
	}
	out := make(Assignment, partitions)
	ids := normalize(members)
	if len(ids) == 0 {
		return out
	}

	// The partitions each present member owned, ascending.
	index := make(map[string]int, len(ids))
	for i, id := range ids {
		index[id] = i
	}
	owned := make([][]int, len(ids))
	for p := range min(partitions, len(prev)) {
		if i, ok := index[prev[p]]; ok {
			owned[i] = append(owned[i], p)
		}
	}

	// Quotas: q each, one more for the r members that owned the most.
	q, r := partitions/len(ids), partitions%len(ids)
	byOwned := make([]int, len(ids))
	for i := range byOwned {
		byOwned[i] = i
	}
	slices.SortStableFunc(byOwned, func(a, b int) int {
		return cmp.Compare(len(owned[b]), len(owned[a])) // stable: ID order on ties
	})
	quota := make([]int, len(ids))
	for k, i := range byOwned {
		quota[i] = q
		if k < r {
			quota[i]++
		}
	}

	// Keep what fits in the quota, lowest partitions first.
	for i, ps := range owned {
		for _, p := range ps[:min(len(ps), quota[i])] {
			out[p] = ids[i]
		}
	}

	// Deal the free partitions, lowest first, to members below quota, lowest
	// ID first. The quotas add up to partitions, so p never runs past the end.
	p := 0
	for i, id := range ids {
		for n := min(len(owned[i]), quota[i]); n < quota[i]; n++ {
			for out[p] != "" {
				p++
			}
			out[p] = id
		}
	}
	return out
}

// Handover is what one member does to move from the current owners to a
// target assignment. Each list is in ascending partition order.
type Handover struct {
	// Release: owned by the member now, assigned to another (or to no one).
	// Stop reading, commit or drop what is held, then release the lease.
	Release []int
	// Acquire: assigned to the member and free now, or held by a member that
	// is no longer present (its lease is acquired once it has expired).
	Acquire []int
	// Wait: assigned to the member but still held by another present member,
	// which will release it; acquire it on a later round.
	Wait []int
}

// Plan returns the handover of member from current (the owner of each
// partition now, "" for none) to target (normally Assign's result for the
// same members). The partitions are those of target; entries of current
// beyond them are ignored. members is the set of present members, as given to
// Assign. A member that is not in members, such as one shutting down, is
// assigned nothing and so releases everything it owns. An empty member ID
// gets an empty Handover.
func Plan(member string, members []string, current, target Assignment) Handover {
	var h Handover
	if member == "" {
		return h
	}
	present := make(map[string]bool, len(members))
	for _, m := range members {
		present[m] = m != ""
	}
	for p, to := range target {
		var from string
		if p < len(current) {
			from = current[p]
		}
		switch {
		case from == member && to != member:
			h.Release = append(h.Release, p)
		case from != member && to == member && present[from]:
			h.Wait = append(h.Wait, p)
		case from != member && to == member:
			h.Acquire = append(h.Acquire, p)
		}
	}
	return h
}

// normalize returns the member IDs sorted, without duplicates and without "".
func normalize(members []string) []string {
	ids := make([]string, 0, len(members))
	for _, m := range members {
		if m != "" {
			ids = append(ids, m)
		}
	}
	slices.Sort(ids)
	return slices.Compact(ids)
}
