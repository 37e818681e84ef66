package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// redisTarget is what --redis names: one server, a Redis Cluster, or the
// master that Redis Sentinel names. Exactly one field is set.
type redisTarget struct {
	single   *redis.Options
	cluster  *redis.ClusterOptions
	failover *redis.FailoverOptions
}

// parseRedisURL reads the forms --redis takes:
//
//	redis://[USER:PASSWORD@]HOST:PORT[/DB]                  one server
//	redis://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]?cluster=true  a Redis Cluster (any of its nodes)
//	redis-sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER[/DB]
//	                                                        the master named MASTER by these sentinels
//
// with rediss:// and rediss-sentinel:// for TLS. USER:PASSWORD is always
// the Redis user's (of the servers that hold the streams); sentinels that
// require a password of their own get it from the query parameters
// sentinel_username and sentinel_password. Addresses may also be added as
// addr=HOST:PORT query parameters, the way go-redis spells them. Other query parameters
// are go-redis's options (dial_timeout=3s, …), as its ParseURL,
// ParseClusterURL and ParseFailoverURL read them. Ports default to 6379,
// and 26379 for sentinels.
func parseRedisURL(raw string) (redisTarget, error) {
	first, hosts := splitHosts(raw)
	u, err := url.Parse(first)
	if err != nil {
		// url.Error repeats the URL, password included.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return redisTarget{}, err
	}
	switch u.Scheme {
	case "redis-sentinel", "rediss-sentinel":
		return parseSentinelURL(u, hosts)
	case "redis", "rediss":
	default:
		// unix:// and the errors for other schemes are go-redis's.
		opts, err := redis.ParseURL(raw)
		return redisTarget{single: opts}, err
	}
	q := u.Query()
	cluster := false
	if q.Has("cluster") {
		if cluster, err = strconv.ParseBool(q.Get("cluster")); err != nil {
			return redisTarget{}, fmt.Errorf("cluster=%q: want true or false", q.Get("cluster"))
		}
		q.Del("cluster")
	}
	if !cluster {
		if len(hosts) > 1 || q.Has("addr") {
			return redisTarget{}, errors.New("several addresses: add cluster=true for a Redis Cluster, or use redis-sentinel://HOST:PORT,…/MASTER for Sentinel")
		}
		v := *u
		v.RawQuery = q.Encode()
		opts, err := redis.ParseURL(v.String())
		return redisTarget{single: opts}, err
	}
	if p := strings.Trim(u.Path, "/"); p != "" && p != "0" {
		return redisTarget{}, fmt.Errorf("a Redis Cluster has database 0 only, not %q", p)
	}
	v, err := withAddrs(u, q, hosts, "6379")
	if err != nil {
		return redisTarget{}, err
	}
	opts, err := redis.ParseClusterURL(v.String())
	if err != nil {
		return redisTarget{}, err
	}
	if opts.TLSConfig != nil {
		// The nodes are found at the addresses the cluster reports: each
		// certificate is checked against the address dialled, not the
		// first seed's host.
		opts.TLSConfig.ServerName = ""
	}
	return redisTarget{cluster: opts}, nil
}

// parseSentinelURL reads a redis-sentinel:// or rediss-sentinel:// URL,
// u with the first of hosts.
func parseSentinelURL(u *url.URL, hosts []string) (redisTarget, error) {
	path := strings.FieldsFunc(u.Path, func(r rune) bool { return r == '/' })
	if len(path) == 0 || len(path) > 2 {
		return redisTarget{}, fmt.Errorf("%s:// wants the master's name, and a database number if not 0, as the path: %s://HOST:26379/mymaster[/DB]", u.Scheme, u.Scheme)
	}
	q := u.Query()
	for _, k := range []string{"master_name", "username", "password", "db"} {
		if q.Has(k) {
			return redisTarget{}, fmt.Errorf("%s:// takes no %s parameter: the master's name (and database) go in the path, the Redis user and password before the host", u.Scheme, k)
		}
	}
	sentUser, sentPass := q.Get("sentinel_username"), q.Get("sentinel_password")
	q.Del("sentinel_username")
	q.Del("sentinel_password")
	q.Set("master_name", path[0])
	if len(path) == 2 {
		q.Set("db", path[1])
	}
	v, err := withAddrs(u, q, hosts, "26379")
	if err != nil {
		return redisTarget{}, err
	}
	v.Scheme = strings.TrimSuffix(u.Scheme, "-sentinel")
	v.User, v.Path = nil, ""
	opts, err := redis.ParseFailoverURL(v.String())
	if err != nil {
		return redisTarget{}, err
	}
	opts.SentinelUsername, opts.SentinelPassword = sentUser, sentPass
	opts.Username = u.User.Username()
	opts.Password, _ = u.User.Password()
	if opts.TLSConfig != nil {
		// The master is found at the address the sentinels report.
		opts.TLSConfig.ServerName = ""
	}
	return redisTarget{failover: opts}, nil
}

// splitHosts splits the comma-separated addresses out of a URL's
// authority: it returns the URL with the first address only, which
// url.Parse reads, and all the addresses. (url.Parse alone takes the list
// for one host whose port starts at the last colon.)
func splitHosts(raw string) (first string, hosts []string) {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw, nil
	}
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	userinfo, list := "", rest[:end]
	if at := strings.LastIndex(list, "@"); at >= 0 {
		userinfo, list = list[:at+1], list[at+1:]
	}
	hosts = strings.Split(list, ",")
	return scheme + "://" + userinfo + hosts[0] + rest[end:], hosts
}

// withAddrs returns u with the first of hosts as its host and the others
// as addr query parameters (before those already in q), each with
// defaultPort when it has none.
func withAddrs(u *url.URL, q url.Values, hosts []string, defaultPort string) (*url.URL, error) {
	for i, h := range hosts {
		if h == "" {
			return nil, fmt.Errorf("an empty address in %q", strings.Join(hosts, ","))
		}
		if _, _, err := net.SplitHostPort(h); err != nil {
			hosts[i] = net.JoinHostPort(strings.Trim(h, "[]"), defaultPort)
		}
	}
	q["addr"] = append(hosts[1:], q["addr"]...)
	v := *u
	v.Host, v.RawQuery = hosts[0], q.Encode()
	return &v, nil
}

// tlsConfig is the TLS configuration of a rediss:// or rediss-sentinel://
// target, nil without TLS.
func (r redisTarget) tlsConfig() *tls.Config {
	switch {
	case r.cluster != nil:
		return r.cluster.TLSConfig
	case r.failover != nil:
		return r.failover.TLSConfig
	default:
		return r.single.TLSConfig
	}
}

// newClient returns a client of the target.
func (r redisTarget) newClient() redis.UniversalClient {
	switch {
	case r.cluster != nil:
		return redis.NewClusterClient(r.cluster)
	case r.failover != nil:
		return redis.NewFailoverClient(r.failover)
	default:
		return redis.NewClient(r.single)
	}
}

// redactURL returns a Redis URL for messages: the password replaced by
// xxxxx (url.URL.Redacted), sentinel_password too.
func redactURL(raw string) string {
	first, hosts := splitHosts(raw)
	u, err := url.Parse(first)
	if err != nil {
		return "(not a URL)"
	}
	if hosts != nil {
		u.Host = strings.Join(hosts, ",")
	}
	if q := u.Query(); q.Has("sentinel_password") {
		q.Set("sentinel_password", "xxxxx")
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}
