package streamtx

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/streamtx/streamtx/internal/rdb"
	"github.com/streamtx/streamtx/internal/streamid"
)

// ErrNoGroups is returned by TrimSafe for a stream without consumer groups.
// No group's position says which entries are no longer needed, and a group
// created later (or a consumer not started yet) may want them all, so a safe
// trim removes nothing. Trim such a stream explicitly (XTRIM, or
// `streamtx trim --force`) if that is what you mean.
var ErrNoGroups = errors.New("streamtx: stream has no consumer groups: no safe trim point")

// TrimOptions configures TrimSafe. The zero value trims to the safe point.
type TrimOptions struct {
	// KeepMinAge keeps entries younger than this even below the safe point.
	// An entry's age is Now minus the millisecond part of its ID. Default 0:
	// no age limit. Negative is an error.
	KeepMinAge time.Duration
	// KeepFrom, when set, keeps every entry at or after this ID even below
	// the safe point (a retention policy's bound). Like KeepMinAge, it can
	// only lower the point.
	KeepFrom string
	// DryRun computes the point and counts the entries below it, removing
	// nothing.
	DryRun bool
	// Now gives the current time for KeepMinAge. Default: the Redis
	// server's clock (TIME), the clock that stamps generated IDs. Unused
	// when KeepMinAge is 0.
	Now func() time.Time
}

// TrimResult says what TrimSafe did.
type TrimResult struct {
	// Point is the MINID trimmed to: entries with lower IDs were removed
	// (in a dry run, would have been).
	Point string
	// Removed is the number of entries removed (in a dry run, the number
	// that would have been).
	Removed int64
	// SafePoint is the stream's safe trim point (see
	// StreamInfo.SafeTrimPoint); Point is lower when KeepMinAge held it back.
	SafePoint string
	// HeldBy is the group whose position is SafePoint, and HeldByPending
	// says whether that position is its oldest pending entry (else it is the
	// ID after its last-delivered ID: the group has not read further).
	HeldBy        string
	HeldByPending bool
	// LimitedByAge reports that KeepMinAge lowered Point below SafePoint.
	LimitedByAge bool // Point is below SafePoint because of KeepMinAge or KeepFrom
	DryRun       bool
}

// Codes of trim.lua (see its header).
const (
	trimOK        = 0
	trimNoStream  = 1
	trimNoGroups  = 2
	trimWrongType = 3
)

// TrimSafe removes the entries of stream that every consumer group has
// received and acknowledged: those below the minimum over groups of the
// oldest pending entry, or of the last-delivered ID + 1 for a group with
// nothing pending (see StreamInfo.SafeTrimPoint), and older than
// opts.KeepMinAge. It trims with an exact XTRIM MINID.
//
// The point is computed and the stream trimmed in one Lua script, so a group
// that reads, acknowledges or claims meanwhile cannot lose an entry. A dry
// run runs the same script, counting instead of trimming. Like XTRIM itself,
// the script takes time proportional to the entries removed (or counted),
// during which Redis serves nobody else: trim regularly rather than rarely.
//
// It returns an error wrapping ErrNoGroups for a stream without groups
// (nothing is trimmed), ErrStreamNotFound for a missing key and
// ErrNotAStream for a key of another type.
func TrimSafe(ctx context.Context, client redis.UniversalClient, stream string, opts TrimOptions) (TrimResult, error) {
	if opts.KeepMinAge < 0 {
		return TrimResult{}, fmt.Errorf("streamtx: TrimSafe: negative KeepMinAge %s", opts.KeepMinAge)
	}
	cutoff := ""
	if opts.KeepMinAge > 0 {
		var now time.Time
		if opts.Now != nil {
			now = opts.Now()
		} else {
			var err error
			if now, err = client.Time(ctx).Result(); err != nil {
				return TrimResult{}, fmt.Errorf("streamtx: trim %q: TIME: %w", stream, err)
			}
		}
		// Entries below the cutoff are at least KeepMinAge (truncated to
		// milliseconds) + 1ms old: older than KeepMinAge.
		ms := max(now.UnixMilli()-opts.KeepMinAge.Milliseconds(), 0)
		cutoff = strconv.FormatInt(ms, 10) + "-0"
	}
	if opts.KeepFrom != "" {
		if !streamid.Valid(opts.KeepFrom) {
			return TrimResult{}, fmt.Errorf("streamtx: TrimSafe: KeepFrom %q is not a stream ID", opts.KeepFrom)
		}
		if cutoff == "" || rdb.IDLess(opts.KeepFrom, cutoff) {
			cutoff = opts.KeepFrom
		}
	}
	dry := "0"
	if opts.DryRun {
		dry = "1"
	}
	scripts, err := luaScripts()
	if err != nil {
		return TrimResult{}, err
	}
	reply, err := scripts.Trim.Run(ctx, client, []string{stream}, cutoff, dry).Result()
	if err != nil {
		return TrimResult{}, fmt.Errorf("streamtx: trim %q: %w", stream, err)
	}
	res, code, err := parseTrim(reply)
	if err != nil {
		return TrimResult{}, fmt.Errorf("streamtx: trim %q: %w", stream, err)
	}
	switch code {
	case trimNoStream:
		return TrimResult{}, fmt.Errorf("%w: %q", ErrStreamNotFound, stream)
	case trimNoGroups:
		return TrimResult{}, fmt.Errorf("%w: %q", ErrNoGroups, stream)
	case trimWrongType:
		return TrimResult{}, fmt.Errorf("%w: %q", ErrNotAStream, stream)
	}
	res.DryRun = opts.DryRun
	return res, nil
}

// parseTrim parses trim.lua's reply.
func parseTrim(v any) (TrimResult, int64, error) {
	a, ok := v.([]any)
	if !ok || len(a) == 0 {
		return TrimResult{}, 0, fmt.Errorf("unexpected trim reply %T", v)
	}
	code, ok := a[0].(int64)
	if !ok || code < trimOK || code > trimWrongType {
		return TrimResult{}, 0, fmt.Errorf("unexpected trim code %v", a[0])
	}
	if code != trimOK {
		return TrimResult{}, code, nil
	}
	if len(a) != 7 {
		return TrimResult{}, 0, fmt.Errorf("unexpected trim reply of %d items", len(a))
	}
	var r TrimResult
	var pending, byAge int64
	var ok1, ok2, ok3, ok4, ok5, ok6 bool
	r.Point, ok1 = a[1].(string)
	r.Removed, ok2 = a[2].(int64)
	r.HeldBy, ok3 = a[3].(string)
	pending, ok4 = a[4].(int64)
	r.SafePoint, ok5 = a[5].(string)
	byAge, ok6 = a[6].(int64)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 || !ok6 {
		return TrimResult{}, 0, errors.New("malformed trim reply")
	}
	r.HeldByPending, r.LimitedByAge = pending == 1, byAge == 1
	return r, trimOK, nil
}
