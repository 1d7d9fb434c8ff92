//go:build linux

package tunneltest

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
)

// Service is a local service with a behaviour of the test's choosing, for
// the cases an echo cannot play: one that never answers, one that greets
// and hangs up, one that never stops sending.
type Service struct {
	ln     net.Listener
	serve  func(c *net.TCPConn, stop <-chan struct{})
	stop   chan struct{}
	active atomic.Int64
	total  atomic.Int64
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	once   sync.Once
}

// NewService serves each connection on 127.0.0.1 with serve, which returns
// when it is done with the connection (the service then closes it) or when
// stop is closed (at cleanup). It stops at test cleanup.
func NewService(t testing.TB, serve func(c *net.TCPConn, stop <-chan struct{})) *Service {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return NewServiceOn(t, ln, serve)
}

// NewServiceOn is NewService on ln (e.g. a listener in a lab namespace).
func NewServiceOn(t testing.TB, ln net.Listener, serve func(c *net.TCPConn, stop <-chan struct{})) *Service {
	s := &Service{ln: ln, serve: serve, stop: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	t.Cleanup(s.Close)
	return s
}

// Silent reads what it is sent and never answers or closes, even after the
// peer's FIN: a service stuck in its own work.
func Silent(c *net.TCPConn, stop <-chan struct{}) {
	_, _ = io.Copy(io.Discard, c)
	<-stop
}

// Greeter writes a greeting and closes at once.
func Greeter(greeting string) func(*net.TCPConn, <-chan struct{}) {
	return func(c *net.TCPConn, _ <-chan struct{}) {
		_, _ = io.WriteString(c, greeting)
	}
}

// Firehose sends until the connection fails, and never reads.
func Firehose(c *net.TCPConn, _ <-chan struct{}) {
	buf := make([]byte, 64<<10)
	for {
		if _, err := c.Write(buf); err != nil {
			return
		}
	}
}

// Deaf never reads or writes until the connection is closed under it.
func Deaf(_ *net.TCPConn, stop <-chan struct{}) { <-stop }

// Addr is the service's address.
func (s *Service) Addr() string { return s.ln.Addr().String() }

// Active is the number of connections being served right now.
func (s *Service) Active() int64 { return s.active.Load() }

// Total is the number of connections accepted so far.
func (s *Service) Total() int64 { return s.total.Load() }

// Close stops accepting, closes every connection and waits for them.
func (s *Service) Close() {
	s.once.Do(func() {
		s.ln.Close()
		close(s.stop)
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
}

func (s *Service) accept() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.active.Add(1)
		s.total.Add(1)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer s.active.Add(-1)
			s.serve(c.(*net.TCPConn), s.stop)
			s.mu.Lock()
			delete(s.conns, c)
			s.mu.Unlock()
			c.Close()
		}()
	}
}
