// Package etcdtest runs real etcd members inside a test process with
// go.etcd.io/etcd/server/v3/embed, so that tests of the etcd ledger need no
// set-up: no binary, no container, no network beyond loopback. Members
// keep their data in the test's temporary directory and can be stopped
// and started again on the same ports, to take a cluster's quorum away
// and give it back.
//
// It holds test code only and must not be imported outside tests.
package etcdtest

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// StartTimeout bounds how long a member may take to start and join.
const StartTimeout = 30 * time.Second

// Cluster is a set of etcd members running in this process.
type Cluster struct {
	members []*Member
}

// Member is one etcd member.
type Member struct {
	name       string
	dir        string
	client     url.URL
	peer       url.URL
	initial    string
	firstStart bool

	mu sync.Mutex
	e  *embed.Etcd
}

// Start starts a cluster of n members and stops it when the test ends.
// Every member listens on loopback ports of its own, reserved for the
// test's lifetime.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{}
	var initial []string
	for i := range n {
		m := &Member{
			name:       fmt.Sprintf("m%d", i),
			dir:        filepath.Join(t.TempDir(), fmt.Sprintf("m%d", i)),
			client:     url.URL{Scheme: "http", Host: freeAddr(t)},
			peer:       url.URL{Scheme: "http", Host: freeAddr(t)},
			firstStart: true,
		}
		initial = append(initial, m.name+"="+m.peer.String())
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.initial = strings.Join(initial, ",")
	}
	// Members of a new cluster wait for each other, so start them all
	// before waiting for any.
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, m := range c.members {
		wg.Go(func() { errs[i] = m.start() })
	}
	wg.Wait()
	t.Cleanup(c.Stop)
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	out := make([]string, len(c.members))
	for i, m := range c.members {
		out[i] = m.client.String()
	}
	return out
}

// Member returns member i.
func (c *Cluster) Member(i int) *Member { return c.members[i] }

// Stop stops every member.
func (c *Cluster) Stop() {
	for _, m := range c.members {
		m.Stop()
	}
}

// Endpoint is the member's client URL.
func (m *Member) Endpoint() string { return m.client.String() }

// Stop stops the member, keeping its data. Stopping a stopped member does
// nothing.
func (m *Member) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.e != nil {
		m.e.Close()
		m.e = nil
	}
}

// Restart starts a stopped member again on its ports and data and waits
// until it has joined its cluster (which needs a quorum of members
// running).
func (m *Member) Restart(t testing.TB) {
	t.Helper()
	if err := m.start(); err != nil {
		t.Fatal(err)
	}
}

// StartAsync starts a stopped member again without waiting for it: a
// member of a cluster that lost its quorum can only finish starting once
// others are back. The returned channel reports the outcome.
func (m *Member) StartAsync() <-chan error {
	done := make(chan error, 1)
	go func() { done <- m.start() }()
	return done
}

func (m *Member) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.e != nil {
		return nil
	}
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.ListenClientUrls = []url.URL{m.client}
	cfg.AdvertiseClientUrls = []url.URL{m.client}
	cfg.ListenPeerUrls = []url.URL{m.peer}
	cfg.AdvertisePeerUrls = []url.URL{m.peer}
	cfg.InitialCluster = m.initial
	cfg.InitialClusterToken = "taglock-test"
	cfg.ClusterState = embed.ClusterStateFlagExisting
	if m.firstStart {
		cfg.ClusterState = embed.ClusterStateFlagNew
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true // tests only: a crash of the test process loses nothing it needs
	cfg.TickMs = 20
	cfg.ElectionMs = 200
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd member %s: %w", m.name, err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("etcd member %s: %w", m.name, err)
	case <-time.After(StartTimeout):
		e.Close()
		return fmt.Errorf("etcd member %s did not become ready within %s", m.name, StartTimeout)
	}
	m.e, m.firstStart = e, false
	return nil
}

// freeAddr returns a loopback address with a port no one listens on.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}
