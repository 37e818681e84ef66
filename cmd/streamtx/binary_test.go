package main

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestBinary builds the command with `go build` and runs it as a user
// would: REDIS_URL from the environment, exit statuses from the process,
// and --watch stopped by Ctrl-C (SIGINT).
func TestBinary(t *testing.T) {
	t.Parallel()
	if runtime.GOOS == "windows" {
		t.Skip("sends SIGINT")
	}
	f := newFixture(t)
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	bin := filepath.Join(t.TempDir(), "streamtx")
	build := exec.Command(goTool, "build", "-o", bin, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	env := append(os.Environ(), "REDIS_URL="+f.url)
	for k, v := range f.env {
		env = append(env, k+"="+v)
	}
	cmd := func(args ...string) (stdout, stderr string, code int) {
		t.Helper()
		c := exec.Command(bin, args...)
		c.Env = env
		var o, e bytes.Buffer
		c.Stdout, c.Stderr = &o, &e
		err := c.Run()
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return o.String(), e.String(), exit.ExitCode()
		}
		require.NoError(t, err)
		return o.String(), e.String(), 0
	}

	s := f.p + "s"
	f.addIDs(s, seq(1, 3)...)
	require.NoError(t, f.rdb.XGroupCreate(f.ctx, s, "g", "0").Err())
	f.readAck(s, "g", "c", 2, 1)

	stdout, _, code := cmd("--help")
	assert.Equal(t, 0, code)
	assert.Contains(t, stdout, "Exit status:")

	stdout, stderr, code := cmd("inspect", s)
	assert.Equal(t, 0, code, stderr)
	assert.Contains(t, stdout, "length         3")
	assert.Contains(t, stdout, `safe trim point: 2-0 (held back by group "g": its oldest pending entry is 2-0)`)

	stdout, stderr, code = cmd("trim", s, "--safe")
	assert.Equal(t, 0, code, stderr)
	assert.Equal(t, "trimmed 1 entry below 2-0\n"+`held back by group "g", whose oldest pending entry is 2-0`+"\n", stdout)

	_, stderr, code = cmd("inspect", f.p+"missing")
	assert.Equal(t, 1, code)
	assert.Contains(t, stderr, "stream not found")
	_, stderr, code = cmd("trim", s)
	assert.Equal(t, 2, code)
	assert.Contains(t, stderr, "give --safe")
	_, stderr, code = cmd("--redis", "redis://127.0.0.1:1/?max_retries=-1", "inspect", s)
	assert.Equal(t, 1, code)
	assert.NotContains(t, stderr, "pool.go", "go-redis's own logging is silenced")

	// --watch runs until SIGINT, then exits 0.
	w := exec.Command(bin, "inspect", s, "--watch", "20ms")
	w.Env = env
	pipe, err := w.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, w.Start())
	lines := bufio.NewScanner(pipe)
	seen := 0
	for seen < 2 && lines.Scan() {
		if strings.HasPrefix(lines.Text(), "stream ") {
			seen++
		}
	}
	require.Equal(t, 2, seen, "two refreshes before the interrupt")
	require.NoError(t, w.Process.Signal(syscall.SIGINT))
	for lines.Scan() { // drain
	}
	waited := make(chan error, 1)
	go func() { waited <- w.Wait() }()
	select {
	case err := <-waited:
		assert.NoError(t, err, "exit status 0 after Ctrl-C")
	case <-time.After(10 * time.Second):
		w.Process.Kill()
		t.Fatal("--watch did not stop within 10s of SIGINT")
	}
}
