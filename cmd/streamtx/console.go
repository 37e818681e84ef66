package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/streamtx/streamtx/console"
)

const consoleHelp = `Serves the web console: every stream and group with its lag, pending
entries and dead letters, lag charts, pending entries and dead letters a
page at a time, replay and purge (each behind a confirmation), and state
records as JSON. The same pages as the Go package
github.com/streamtx/streamtx/console, which a service can mount on its own
admin port instead.

It listens on loopback unless told otherwise. Listening on another address
needs credentials (--user, or a token) or --insecure. The bearer token comes
from $STREAMTX_CONSOLE_TOKEN and the password of --user from
$STREAMTX_CONSOLE_PASSWORD, never from the command line (where other users
of the machine can read it). Every replay and purge is logged to stderr with
who and what. Ctrl-C stops it.
`

func runConsole(ctx context.Context, c *cli, args []string) error {
	f := c.newFlags("console [--listen ADDR] [--read-only] [--streams S1,S2] [--topics T1,T2] [--match PATTERN] [--interval D] [--root PATH]", consoleHelp)
	listen := f.String("listen", "127.0.0.1:8080", "serve on `ADDR` (host:port)")
	readOnly := f.Bool("read-only", false, "refuse replay and purge")
	streams := f.String("streams", "", "show only these streams (`LIST`, comma-separated); default: every stream key, found with SCAN")
	topics := f.String("topics", "", "show only these topics (`LIST`, comma-separated); with --streams or --topics nothing is scanned")
	match := f.String("match", "", "show the streams whose keys match `PATTERN` (SCAN MATCH); default *")
	interval := f.Duration("interval", 0, "inspect every stream every `D` (default 5s)")
	root := f.String("root", "", "serve under `PATH` (e.g. /streamtx) instead of /")
	user := f.String("user", "", "require HTTP basic auth as `NAME`, with the password in $STREAMTX_CONSOLE_PASSWORD")
	insecure := f.Bool("insecure", false, "allow a non-loopback --listen without credentials")
	if _, err := f.parse(args, 0, 0); err != nil {
		return err
	}
	opts := console.Options{ReadOnly: *readOnly, Match: *match, Interval: *interval, RootPath: *root,
		BearerToken: c.env("STREAMTX_CONSOLE_TOKEN"),
		Logger:      slog.New(slog.NewTextHandler(c.stderr, nil)),
	}
	opts.Streams, opts.Topics = splitList(*streams), splitList(*topics)
	if *user != "" {
		opts.Username, opts.Password = *user, c.env("STREAMTX_CONSOLE_PASSWORD")
		if opts.Password == "" {
			return usagef("console: --user needs the password in $STREAMTX_CONSOLE_PASSWORD")
		}
	}
	host, _, err := net.SplitHostPort(*listen)
	if err != nil {
		return usagef("console: --listen %q: %v", *listen, err)
	}
	if !loopback(host) && opts.BearerToken == "" && opts.Username == "" && !*insecure {
		return usagef("console: --listen %s is not a loopback address: set $STREAMTX_CONSOLE_TOKEN or --user, or --insecure", *listen)
	}
	rdb, err := c.client()
	if err != nil {
		return err
	}
	con, err := console.New(rdb, opts)
	if err != nil {
		return usagef("console: %v", err)
	}
	defer con.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle(strings.TrimRight(*root, "/")+"/", con)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(c.stdout, "streamtx console: serving on http://%s%s/\n", ln.Addr(), strings.TrimRight(*root, "/"))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	return err
}

// loopback reports whether host (from --listen) is a loopback address or
// localhost. An empty host (":8080") listens everywhere.
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
