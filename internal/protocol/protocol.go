// Package protocol defines the messages tunneld and tunnelc exchange: the
// control-stream handshake and the header of each data stream, their framing,
// version and limits.
//
// Framing: a 4-byte big-endian length, then that many bytes of JSON, at most
// MaxFrame. The package only encodes and decodes through io.Reader and
// io.Writer; it must not dial, set deadlines, or know about yamux.
package protocol

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Version is the protocol version this build speaks. Peers with another
// version are refused with an error naming both.
const Version = 1

// MaxFrame is the largest frame either side accepts. A larger length prefix
// is a protocol error and the body is not read.
const MaxFrame = 64 << 10

// ErrFrameTooLarge is returned for a frame whose length exceeds MaxFrame.
var ErrFrameTooLarge = errors.New("frame too large")

// WriteFrame encodes v as one frame in a single Write, so a frame is never
// interleaved with other writes on a shared writer that is guarded per call.
func WriteFrame(w io.Writer, v any) error {
	buf, err := AppendFrame(nil, v)
	if err != nil {
		return err
	}
	if _, err := w.Write(buf); err != nil {
		return fmt.Errorf("write frame: %w", err)
	}
	return nil
}

// AppendFrame appends v, framed, to buf: for a sender that must hand over a
// frame's bytes rather than write them (a stream's first bytes ride on its
// opening frame).
func AppendFrame(buf []byte, v any) ([]byte, error) {
	body, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode frame: %w", err)
	}
	if len(body) > MaxFrame {
		return nil, fmt.Errorf("encode frame: %d bytes: %w", len(body), ErrFrameTooLarge)
	}
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(body)))
	return append(buf, body...), nil
}

// ReadFrame reads one frame from r and decodes it into v. Unknown JSON
// fields are ignored so that a newer peer can add fields within a version.
func ReadFrame(r io.Reader, v any) error {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return fmt.Errorf("read frame length: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[:])
	if n > MaxFrame {
		return fmt.Errorf("read frame: length %d > %d: %w", n, MaxFrame, ErrFrameTooLarge)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return fmt.Errorf("read frame body (%d bytes): %w", n, err)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("decode frame: %w", err)
	}
	return nil
}

// Control message types.
const (
	TypeHello   = "hello"
	TypeWelcome = "welcome"
	TypeError   = "error"
	TypeGoodbye = "goodbye"
	// TypeTunnel, from the server during a session, reports a tunnel whose
	// registration was pending (see TunnelResult.Pending) and has now come
	// up. A client that does not know it ignores it, as it ignores every
	// unknown control message.
	TypeTunnel = "tunnel"
	// TypeTunnelAdd, from the client during a session, asks for one more
	// tunnel (its config was reloaded); the server answers with a
	// TypeTunnel result, OK, pending or refused.
	TypeTunnelAdd = "tunnel_add"
	// TypeTunnelRemove, from the client during a session, gives a tunnel
	// up: its listener closes at once, its open connections are reset
	// after the drain the message gives.
	TypeTunnelRemove = "tunnel_remove"
)

// Control is one message on the control stream. Type says which of the
// other fields is set.
type Control struct {
	Type    string         `json:"type"`
	Hello   *Hello         `json:"hello,omitempty"`
	Welcome *Welcome       `json:"welcome,omitempty"`
	Error   *Error         `json:"error,omitempty"`
	Goodbye *Goodbye       `json:"goodbye,omitempty"`
	Tunnel  *TunnelResult  `json:"tunnel,omitempty"`
	Add     *TunnelRequest `json:"add,omitempty"`
	Remove  *TunnelRemove  `json:"remove,omitempty"`
}

// TunnelRemove gives up tunnel Name; its open connections may go on for
// DrainMs milliseconds.
type TunnelRemove struct {
	Name    string `json:"name"`
	DrainMs int64  `json:"drain_ms"`
}

// Hello is the first message of a session, sent by the client.
type Hello struct {
	Version int             `json:"version"`
	Client  string          `json:"client"`
	Token   string          `json:"token"`
	Tunnels []TunnelRequest `json:"tunnels"`
	// ResumeWindow is the client's resume_window in milliseconds: how
	// long it would keep its connections through an outage. 0 (or a
	// client that does not send it) turns resumption off.
	ResumeWindow int64 `json:"resume_window_ms,omitempty"`
	// Resume asks to carry on the session the server welcomed earlier,
	// with every connection it held, instead of starting a new one.
	Resume *ResumeRequest `json:"resume,omitempty"`
}

// ResumeRequest names the session to resume and proves the right to: the
// secret is the one the server gave in that session's latest welcome.
type ResumeRequest struct {
	Session string `json:"session"`
	Secret  string `json:"secret"`
}

// ResumeGrant, in a welcome, says the session can be resumed: for Window
// milliseconds after it is lost (the smaller of both sides' windows),
// with Secret, which the server keeps only as a hash and replaces at
// every welcome.
type ResumeGrant struct {
	Window int64  `json:"window_ms"`
	Secret string `json:"secret"`
}

// TunnelRequest asks the server for one public listener.
type TunnelRequest struct {
	Name       string `json:"name"`
	Type       string `json:"type"`
	RemotePort int    `json:"remote_port"`
	// PreferPort, with RemotePort 0, asks for the port the server picked in
	// an earlier session, so a reconnecting client keeps its public address
	// where it can. The server falls back to another port if it is taken.
	PreferPort int `json:"prefer_port,omitempty"`
	// Web is set for http and https tunnels: the names they are reached
	// by on the server's shared ports, and how requests are handled.
	Web *WebTunnel `json:"web,omitempty"`
}

// WebTunnel is what the server needs of an http or https tunnel.
type WebTunnel struct {
	Subdomain string   `json:"subdomain,omitempty"`
	Hostnames []string `json:"hostnames,omitempty"`
	Locations []string `json:"locations,omitempty"`
	// HostHeader replaces the Host header the local service gets.
	HostHeader string `json:"host_header,omitempty"`
	// Forwarded adds X-Forwarded-For/-Proto/-Host and Forwarded.
	Forwarded bool `json:"forwarded,omitempty"`
	// BasicAuth is "user:BCRYPT-HASH" entries; empty lets everyone in.
	BasicAuth []string `json:"basic_auth,omitempty"`
	// Terminate, for https, has the server terminate TLS.
	Terminate bool `json:"terminate,omitempty"`
}

// Welcome accepts a session. Each requested tunnel gets a result; a session
// is welcomed even when some tunnels failed, so one bad tunnel never takes
// the others down.
type Welcome struct {
	Session string         `json:"session"`
	Tunnels []TunnelResult `json:"tunnels"`
	// Client is the name the server knows the client by, when that is
	// not the name the client declared (per-client credentials or a
	// client certificate decide it).
	Client string `json:"client,omitempty"`
	// Resume, when set, lets the client resume this session after an
	// outage (see Hello.Resume).
	Resume *ResumeGrant `json:"resume,omitempty"`
	// Resumed says the server carried on the session the hello asked to
	// resume: its tunnels are as they were, and a stream for each
	// connection it still holds follows (StreamHeader.Resume).
	Resumed bool `json:"resumed,omitempty"`
}

// TunnelResult is the outcome for one TunnelRequest.
type TunnelResult struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Public string `json:"public,omitempty"`
	// URLs, for an http or https tunnel, are every address it is
	// reached by (Public is the first).
	URLs  []string `json:"urls,omitempty"`
	Code  string   `json:"code,omitempty"`
	Error string   `json:"error,omitempty"`
	// Pending, with OK false, means the refusal can pass (the port is
	// held, a bind failed) and the server keeps trying in this session;
	// a TypeTunnel message follows when the tunnel comes up.
	Pending bool `json:"pending,omitempty"`
}

// Error refuses a session; the server closes it after sending.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Goodbye announces a clean close (for example a server shutting down), so
// the peer can tell it from a dead path. The side that receives it closes
// the session at once; the side that sent it leaves the close to its peer,
// for at most GoodbyeWait. Closing right after sending, with the peer's
// frames still unread in the socket, makes the kernel answer with a reset
// that can overtake the goodbye, and the peer would log a lost session.
type Goodbye struct {
	Reason string `json:"reason"`
}

// GoodbyeWait bounds how long the side that said goodbye waits for its
// peer to close the session.
const GoodbyeWait = 2 * time.Second

// Error codes. Session-level codes are permanent: a client must not retry
// them without a change of config. Tunnel-level codes come in TunnelResult.
const (
	CodeAuth       = "auth"        // wrong token
	CodeVersion    = "version"     // protocol version mismatch
	CodeBadRequest = "bad_request" // malformed hello
	CodeInternal   = "internal"    // the server failed; retryable
	// CodeResume refuses a resume whose secret does not match the
	// session's. The session stays held for its real client; a client
	// given this code starts a new session instead.
	CodeResume = "resume"
	// CodeBanned refuses a client the server's operator keeps out for a
	// while. It passes: the client retries with its backoff.
	CodeBanned = "banned"

	CodePortNotAllowed = "port_not_allowed"
	CodePortInUse      = "port_in_use"
	CodeBindFailed     = "bind_failed"
	CodeInvalidTunnel  = "invalid_tunnel"
	// CodeHostInUse: a host name is another client's. It passes like a
	// held port: the tunnel stays pending.
	CodeHostInUse = "host_in_use"
	// CodeHostNotAllowed: a host name outside what this client may take.
	CodeHostNotAllowed = "host_not_allowed"
)

// StreamHeader opens every data stream, written by the server.
type StreamHeader struct {
	Tunnel     string `json:"tunnel"`
	RemoteAddr string `json:"remote_addr"`
	// PublicAddr is the address the public client connected to (the
	// destination of a PROXY header the client sends its service).
	PublicAddr string `json:"public_addr,omitempty"`
	// Conn is the server's id for the public connection, so both logs name it alike.
	Conn uint64 `json:"conn"`
	// Resumable says both ends carry this connection as a resumable one
	// (package resume): what each writes is kept until the other's reader
	// acknowledges it. Set on every stream of a session that agreed a
	// resume window.
	Resumable bool `json:"resumable,omitempty"`
	// Resume, on a resumed session, carries on connection Conn: Offset is
	// how much of the client's data the server has read. The client
	// answers with a ResumeReply before anything else.
	Resume bool   `json:"resume,omitempty"`
	Offset uint64 `json:"offset,omitempty"`
}

// ResumeReply answers a StreamHeader with Resume set: how much of the
// server's data the client has read, or why the connection cannot go on.
// A connection the client does not know, at server offset 0, is one the
// server took while the client was away: the client treats it as new.
type ResumeReply struct {
	Offset uint64 `json:"offset"`
	Error  string `json:"error,omitempty"`
}

// Dial results, one byte written by the client on a data stream once it has
// tried the local service: the server holds back the public side's first
// byte until it knows the dial worked, so a refused local service becomes a
// reset public connection instead of an empty reply that looks complete.
const (
	DialOK     byte = 0
	DialFailed byte = 1
)
