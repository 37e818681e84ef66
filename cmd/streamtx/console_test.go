package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx"
)

func TestConsole(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.p + "s"
	f.addIDs(s, seq(1, 3)...)
	require.NoError(t, f.rdb.XGroupCreate(f.ctx, s, "g", "0").Err())
	top, err := streamtx.CreateTopic(f.ctx, f.rdb, f.p+"t", streamtx.TopicConfig{Partitions: 2})
	require.NoError(t, err)
	require.NoError(t, f.rdb.XGroupCreateMkStream(f.ctx, top.Stream(0), "tg", "0").Err())

	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()
	pr, pw := io.Pipe()
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"console", "--listen", "127.0.0.1:0", "--streams", s, "--topics", top.Name(), "--root", "/stx", "--read-only"}, pw, io.Discard, f.getenv)
		pw.Close()
	}()
	line, err := bufio.NewReader(pr).ReadString('\n')
	require.NoError(t, err)
	go io.Copy(io.Discard, pr)
	base, ok := strings.CutPrefix(strings.TrimSpace(line), "streamtx console: serving on ")
	require.True(t, ok, line)
	require.True(t, strings.HasSuffix(base, "/stx/"), base)

	res, err := http.Get(base)
	require.NoError(t, err)
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	assert.Equal(t, http.StatusOK, res.StatusCode)
	assert.Contains(t, string(body), `data-stream="`+s+`" data-group="g" data-length="3" data-lag="3"`)
	assert.Contains(t, string(body), "read-only")
	assert.Contains(t, string(body), "topic?name="+url.QueryEscape(top.Name()), "the topic named by --topics is shown")

	cancel()
	select {
	case code := <-done:
		assert.Equal(t, exitOK, code)
	case <-time.After(10 * time.Second):
		t.Fatal("console did not stop")
	}
}

func TestConsoleUsage(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	assert.Contains(t, f.fails(exitUsage, "console", "--listen", "0.0.0.0:0"), "not a loopback address")
	assert.Contains(t, f.fails(exitUsage, "console", "--listen", ":0"), "not a loopback address")
	assert.Contains(t, f.fails(exitUsage, "console", "--user", "ops"), "STREAMTX_CONSOLE_PASSWORD")
	assert.Contains(t, f.fails(exitUsage, "console", "extra"), "usage: streamtx console")
	assert.Contains(t, f.ok("console", "--help"), "--read-only")
}
