package redistest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TLS is a throwaway PKI made for one test server: a CA, a certificate for
// 127.0.0.1 signed by it, and a client certificate signed by it, each a PEM
// file in one directory.
type TLS struct {
	CA                    string // the CA's certificate
	ServerCert, ServerKey string // the server's certificate (IP SAN 127.0.0.1) and key
	ClientCert, ClientKey string // a client certificate (client auth) and key
	// AuthClients is whether the server requires a client certificate
	// (--tls-auth-clients yes), that is mutual TLS.
	AuthClients bool

	pool   *x509.CertPool
	client tls.Certificate
}

// NewTLS writes a fresh CA, server certificate and client certificate into
// dir.
func NewTLS(dir string, authClients bool) (*TLS, error) {
	x := &TLS{
		CA:          filepath.Join(dir, "ca.crt"),
		ServerCert:  filepath.Join(dir, "server.crt"),
		ServerKey:   filepath.Join(dir, "server.key"),
		ClientCert:  filepath.Join(dir, "client.crt"),
		ClientKey:   filepath.Join(dir, "client.key"),
		AuthClients: authClients,
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	ca := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "streamtx test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	if ca, err = x509.ParseCertificate(caDER); err != nil {
		return nil, err
	}
	if err := writePEM(x.CA, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, certPath, keyPath string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kb, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certPath, "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(keyPath, "PRIVATE KEY", kb)
	}
	if err := leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, x.ServerCert, x.ServerKey); err != nil {
		return nil, err
	}
	if err := leaf(3, "streamtx test client", x509.ExtKeyUsageClientAuth, x.ClientCert, x.ClientKey); err != nil {
		return nil, err
	}
	x.pool = x509.NewCertPool()
	x.pool.AddCert(ca)
	if x.client, err = tls.LoadX509KeyPair(x.ClientCert, x.ClientKey); err != nil {
		return nil, err
	}
	return x, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}

// ClientConfig returns a TLS configuration that verifies the server against
// the CA (server name 127.0.0.1) and presents the client certificate.
func (x *TLS) ClientConfig() *tls.Config {
	return &tls.Config{
		RootCAs:      x.pool,
		ServerName:   "127.0.0.1",
		Certificates: []tls.Certificate{x.client},
		MinVersion:   tls.VersionTLS12,
	}
}

// serverArgs are redis-server's TLS arguments for port.
func (x *TLS) serverArgs(port int) []string {
	auth := "no"
	if x.AuthClients {
		auth = "yes"
	}
	return []string{
		"--tls-port", strconv.Itoa(port),
		"--tls-cert-file", x.ServerCert, "--tls-key-file", x.ServerKey,
		"--tls-ca-cert-file", x.CA, "--tls-auth-clients", auth,
	}
}

// errNoTLS is returned when redis-server was built without TLS.
var errNoTLS = errors.New("redis-server on PATH was built without TLS support")

// StartTLSServer is StartServer for a server that listens with TLS only
// (--port 0, --tls-port), with certificates made by NewTLS; authClients
// makes it require a client certificate (--tls-auth-clients yes). Its
// Client and TLS().ClientConfig() verify the server and present the client
// certificate.
//
// A redis-server built without TLS (the builds of Redis 7.2 and 7.4 and
// Valkey 8.0 in ../shared/redis) skips the test with a message saying so,
// except under STREAMTX_REQUIRE_REDIS=1 with Debian's /usr/bin/redis-server,
// which is built with TLS: there the test fails.
func StartTLSServer(t testing.TB, authClients bool, args ...string) *Server {
	t.Helper()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		unavailable(t, err)
	}
	x, err := NewTLS(t.TempDir(), authClients)
	if err != nil {
		t.Fatalf("redistest: certificates: %v", err)
	}
	s, err := newTLSServer(t.TempDir(), x, args)
	if errors.Is(err, errNoTLS) {
		if real, _ := filepath.EvalSymlinks(path); os.Getenv("STREAMTX_REQUIRE_REDIS") == "1" && real == "/usr/bin/redis-server" {
			t.Fatalf("redistest: STREAMTX_REQUIRE_REDIS=1 and Debian's redis-server (%s) should support TLS: %v", path, err)
		}
		t.Skipf("TLS test: %v (%s); put a redis-server built with TLS first on PATH, such as Debian's /usr/bin/redis-server", err, path)
	}
	if err != nil {
		t.Fatalf("redistest: %v", err)
	}
	s.tb = t
	t.Cleanup(s.Stop)
	return s
}

func newTLSServer(dir string, x *TLS, args []string) (*Server, error) {
	const attempts = 5
	var err error
	for range attempts {
		s := &Server{dir: dir, args: args, tls: x}
		if s.port, err = freePort(); err != nil {
			return nil, err
		}
		if s.proc, err = s.launch(); err == nil {
			return s, nil
		}
		if noTLS(err) {
			return nil, fmt.Errorf("%w:\n%v", errNoTLS, err)
		}
		if !errors.Is(err, errAddrInUse) {
			return nil, err
		}
	}
	return nil, err
}

// noTLS reports whether a failed start's message (which quotes the log)
// says the server has no TLS.
func noTLS(err error) bool {
	msg := strings.ToLower(err.Error())
	for _, s := range []string{
		"failed finding tls support",                 // 7.2+, Valkey
		"missing implement of connection type tls",   // 7.2+, Valkey
		"tls not supported",                          // older builds
		"bad directive or wrong number of arguments", // a build that does not know tls-port
	} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// TLS returns the server's certificates, or nil for a server without TLS.
func (s *Server) TLS() *TLS { return s.tls }

// URL returns a redis:// URL of the server, rediss:// for a TLS server,
// with user and password when user is not empty.
func (s *Server) URL(user, password string) string {
	scheme := "redis"
	if s.tls != nil {
		scheme = "rediss"
	}
	cred := ""
	if user != "" {
		cred = user + ":" + password + "@"
	}
	return scheme + "://" + cred + s.Addr()
}

// serverPidTLS is serverPid over TLS when tc is not nil.
func serverPidTLS(addr string, tc *tls.Config) (int, error) {
	if tc == nil {
		return serverPid(addr)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, TLSConfig: tc, MaxRetries: -1, DialTimeout: time.Second, ReadTimeout: time.Second})
	defer rdb.Close()
	info, err := rdb.Info(context.Background(), "server").Result()
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(parseInfo(info)["process_id"])
}
