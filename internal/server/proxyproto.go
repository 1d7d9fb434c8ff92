package server

// PROXY protocol on the public side: a load balancer in front of tunneld
// (trusted_proxies) says who its client is in a PROXY header, v1 or v2,
// read with github.com/pires/go-proxyproto. A header from any other
// address is not read: to the tunnel it is data (an http front refuses
// it as a bad request, the https front as no TLS).

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/pires/go-proxyproto"
)

// trusted reports whether a is one of trusted_proxies.
func (s *Server) trusted(a net.Addr) bool {
	ps := s.config().Proxies
	if len(ps) == 0 {
		return false
	}
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	ip, ok := netip.AddrFromSlice(ta.IP)
	if !ok {
		return false
	}
	ip = ip.Unmap()
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// proxied reads the PROXY header a trusted proxy sends first, within
// timeout, and returns the connection as from the client it names (the
// proxy itself for a LOCAL header, a health check). A connection from any
// other address is returned as it is.
func (s *Server) proxied(c net.Conn, timeout time.Duration) (net.Conn, error) {
	if !s.trusted(c.RemoteAddr()) {
		return c, nil
	}
	br := bufio.NewReaderSize(c, 512)
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	h, err := proxyproto.Read(br)
	_ = c.SetReadDeadline(time.Time{})
	if err != nil {
		return nil, fmt.Errorf("PROXY header from trusted proxy %s: %w", c.RemoteAddr(), err)
	}
	peer := c.RemoteAddr()
	if h.Command.IsProxy() && h.SourceAddr != nil {
		peer = h.SourceAddr
	}
	return &aheadConn{Conn: c, r: br, peer: peer}, nil
}
