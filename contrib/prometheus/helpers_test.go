package prometheus_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/streamtx/streamtx/internal/redistest"
)

// TestMain stops the redis-server that redistest starts for the integration
// tests when REDIS_ADDR is not set.
func TestMain(m *testing.M) { redistest.Main(m) }

// gauge returns the value of the one gauge series of name with labels.
func gauge(t *testing.T, c prometheus.Collector, name string, labels map[string]string) float64 {
	t.Helper()
	found := series(t, c, name, labels)
	require.Len(t, found, 1, "gauge %s%v", name, labels)
	return found[0].GetGauge().GetValue()
}

// waitFor polls cond until it holds, or fails the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "timed out after %s waiting until %s", d, what)
		time.Sleep(10 * time.Millisecond)
	}
}
