// Package browsertest drives the web console (package console) in a real
// headless Chromium with chromedp. It is a module of its own so that the
// core module does not depend on chromedp.
//
//	cd console/browsertest && go test -count=1 -v .
//
// It needs Redis (REDIS_ADDR, or a redis-server on PATH) and Chromium
// ($STREAMTX_CHROMIUM, else chromium or chromium-browser on PATH; Debian's
// package is "chromium"). Without either it skips, or fails when
// STREAMTX_REQUIRE_REDIS=1, as CI sets it. Screenshots of every page go to
// $STREAMTX_ARTIFACTS when set, else to a temporary directory; the test logs
// where.
package browsertest

import (
	"context"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
	"github.com/streamtx/streamtx/console"
	"github.com/streamtx/streamtx/internal/redistest"
	"github.com/streamtx/streamtx/txn"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// chromium returns the browser to run, or skips (fails under
// STREAMTX_REQUIRE_REDIS=1) when there is none.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("STREAMTX_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no Chromium: apt-get install chromium, or set STREAMTX_CHROMIUM"
	if os.Getenv("STREAMTX_REQUIRE_REDIS") == "1" {
		t.Fatal(msg + " (STREAMTX_REQUIRE_REDIS=1)")
	}
	t.Skip(msg)
	return ""
}

// TestReplayInBrowser opens the overview, follows the group with dead
// letters, opens one, replays it with the button through the confirmation
// page, and checks in Redis that it is back in its stream exactly once.
func TestReplayInBrowser(t *testing.T) {
	browser := chromium(t)
	rdb := redistest.Client(t)
	ctx := context.Background()
	p := redistest.Prefix(t, rdb)
	orders := p + "orders"

	// A consumer that dead-letters the orders whose amount is not a number.
	for i := range 12 {
		amount := strconv.Itoa(10 * (i + 1))
		if i == 3 || i == 8 {
			amount = "twelve"
		}
		require.NoError(t, rdb.XAdd(ctx, &redis.XAddArgs{Stream: orders,
			Values: []any{"order_id", "o-" + strconv.Itoa(i), "amount", amount}}).Err())
	}
	h := streamtx.HandlerFunc(func(_ context.Context, msg *streamtx.Message, _ *txn.Tx) error {
		if _, err := strconv.Atoi(msg.Values["amount"]); err != nil {
			return streamtx.Permanent(err)
		}
		return nil
	})
	c, err := streamtx.NewConsumer(rdb, streamtx.Config{Stream: orders, Group: "billing", Consumer: "billing-1",
		Block: 50 * time.Millisecond}, h)
	require.NoError(t, err)
	dlq, err := streamtx.DeadLetterStreamFor(orders, "billing")
	require.NoError(t, err)
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(cctx) }()
	require.Eventually(t, func() bool {
		info, err := streamtx.Inspect(ctx, rdb, orders)
		return err == nil && len(info.Groups) == 1 && info.Groups[0].Lag == 0 && info.Groups[0].Pending == 0 &&
			rdb.XLen(ctx, dlq).Val() == 2
	}, 20*time.Second, 20*time.Millisecond)
	stop()
	require.NoError(t, <-done)
	// A second group, behind, with entries pending.
	require.NoError(t, rdb.XGroupCreate(ctx, orders, "audit", "0").Err())
	require.NoError(t, rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "audit", Consumer: "audit-1",
		Streams: []string{orders, ">"}, Count: 4, Block: -1}).Err())
	dead, _, err := streamtx.ListDeadLetters(ctx, rdb, dlq, "-", 10)
	require.NoError(t, err)
	require.Len(t, dead, 2)

	con, err := console.New(rdb, console.Options{Match: p + "*", Interval: time.Second})
	require.NoError(t, err)
	defer con.Close()
	srv := httptest.NewServer(con)
	defer srv.Close()

	artifacts := os.Getenv("STREAMTX_ARTIFACTS")
	if artifacts == "" {
		artifacts = t.TempDir()
	}
	require.NoError(t, os.MkdirAll(artifacts, 0o755))
	t.Logf("screenshots in %s", artifacts)

	actx, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(browser),
		chromedp.NoSandbox, // as root in CI
		chromedp.Headless,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx, chromedp.WithLogf(t.Logf))
	defer cancelBrowser()
	bctx, cancelTimeout := context.WithTimeout(bctx, 90*time.Second)
	defer cancelTimeout()

	shot := func(name string) chromedp.Action[chromedp.Void] {
		return chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			png, err := chromedp.FullScreenshot(100)(ctx, tg)
			if err != nil {
				return err
			}
			path := filepath.Join(artifacts, name+".png")
			t.Logf("screenshot %s (%d bytes)", path, len(png))
			return os.WriteFile(path, png, 0o644)
		})
	}
	css := func(sel string) chromedp.CSS { return chromedp.CSS(sel) }
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Text(css(sel)))
		require.NoError(t, err, sel)
		return s
	}
	row := `tr.row[data-group="billing"]`
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Navigate(srv.URL+"/"),
		chromedp.WaitVisible(css(row)),
		shot("1-overview"),
	))
	deadText := text(row + ` td.dead`)
	// Follow the group.
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Click(css(row+` a.group-link`)),
		chromedp.WaitVisible(css(`table.consumers`)),
		shot("2-group"),
	))
	title, err := chromedp.Run(bctx, chromedp.Title())
	require.NoError(t, err)
	require.NoError(t, chromedp.Do(bctx,
		chromedp.Click(css(`a.dlq-link`)),
		chromedp.WaitVisible(css(`table.dead-letters`)),
		shot("3-dead-letters"),
		// Open the first dead letter and replay it.
		chromedp.Click(css(`tr.dl a.show-link`)),
		chromedp.WaitVisible(css(`a.replay-one`)),
		shot("4-dead-letter"),
		chromedp.Click(css(`a.replay-one`)),
		chromedp.WaitVisible(css(`button.confirm`)),
		shot("5-confirm"),
		chromedp.Click(css(`button.confirm`)),
		chromedp.WaitVisible(css(`p.done`)),
		shot("6-replayed"),
	))
	doneText := text(`p.done`)
	assert.Equal(t, "2", strings.TrimSpace(deadText))
	assert.Contains(t, title, "billing on "+orders)
	assert.Equal(t, "Replayed 1 dead letters into the stream.", strings.TrimSpace(doneText))

	// In Redis: the first dead letter is gone from the dead letters and
	// back in orders exactly once, with its fields; the other stays.
	left, _, err := streamtx.ListDeadLetters(ctx, rdb, dlq, "-", 10)
	require.NoError(t, err)
	require.Len(t, left, 1)
	assert.Equal(t, dead[1].ID, left[0].ID)
	entries, err := rdb.XRange(ctx, orders, "-", "+").Result()
	require.NoError(t, err)
	var copies int
	for _, e := range entries {
		if e.Values["stx.replay.of"] == dead[0].SourceID {
			copies++
			assert.Equal(t, dead[0].Values["order_id"], e.Values["order_id"])
			assert.Equal(t, "billing", e.Values["stx.replay.group"])
		}
	}
	assert.Equal(t, 1, copies, "the replayed entry is in %s once", orders)
	assert.Len(t, entries, 13)

	// Reloading the result page (or replaying again) adds nothing.
	require.NoError(t, chromedp.Do(bctx, chromedp.Reload(), chromedp.WaitVisible(css(`table.dead-letters`))))
	assert.Equal(t, int64(13), rdb.XLen(ctx, orders).Val())
}
