package yamux

import (
	"fmt"
	"io"
	"os"
	"time"
)

// Config is used to tune the Yamux session
type Config struct {
	// AcceptBacklog is used to limit how many streams may be
	// waiting an accept.
	AcceptBacklog int

	// EnableKeepalive is used to do a period keep alive
	// messages using a ping.
	EnableKeepAlive bool

	// KeepAliveInterval is how often to perform the keep alive
	KeepAliveInterval time.Duration

	// ConnectionWriteTimeout is meant to be a "safety valve" timeout after
	// we which will suspect a problem with the underlying connection and
	// close it. This is only applied to writes, where's there's generally
	// an expectation that things will move along quickly.
	ConnectionWriteTimeout time.Duration

	// MaxStreamWindowSize is used to control the maximum
	// window size that we allow for a stream.
	MaxStreamWindowSize uint32

	// StreamWindowCap (local patch), when above MaxStreamWindowSize,
	// turns on window auto-tuning: the session measures the
	// bandwidth-delay product with pings while data arrives and grows
	// every stream's window from MaxStreamWindowSize up to this cap when
	// the window is what limits the senders. WindowBudget, when set,
	// bounds the grown window times the streams open at the time.
	StreamWindowCap uint32
	WindowBudget    uint64

	// StreamOpenTimeout is the maximum amount of time that a stream will
	// be allowed to remain in pending state while waiting for an ack from the peer.
	// Once the timeout is reached the session will be gracefully closed.
	// A zero value disables the StreamOpenTimeout allowing unbounded
	// blocking on OpenStream calls.
	StreamOpenTimeout time.Duration

	// StreamCloseTimeout is the maximum time that a stream will allowed to
	// be in a half-closed state when `Close` is called before forcibly
	// closing the connection. Forcibly closed connections will empty the
	// receive buffer, drop any future packets received for that stream,
	// and send a RST to the remote side.
	StreamCloseTimeout time.Duration

	// LogOutput is used to control the log destination. Either Logger or
	// LogOutput can be set, not both.
	LogOutput io.Writer

	// Logger is used to pass in the logger to be used. Either Logger or
	// LogOutput can be set, not both.
	Logger Logger

	// IncomingStreamLimit (local patch) is how many streams the peer may
	// open over the session's whole life; 0 means no limit. A stream
	// beyond it is refused with a RST before anything is allocated for
	// it, and frames for it are discarded. A server whose clients open
	// one control stream and nothing else sets 1, so an unauthenticated
	// or rogue peer cannot make it hold streams and their windows.
	IncomingStreamLimit int

	// QueueAcceptAck (local patch) makes AcceptStream queue the stream's
	// acknowledgment (the window update with ACK) and return, instead of
	// waiting until it is written: on a slow link saturated by bulk
	// data, that write held the one goroutine that accepts every new
	// stream for a write slot per stream.
	QueueAcceptAck bool

	// SlowLink (local patch), when set, is called when writes start to
	// wait on the conn (the session has just bounded its frames, see
	// frameCap) with true, and with false when they stop waiting. It runs
	// on a writer's goroutine and must not block; the tunnel uses it to
	// keep the kernel's send queue short only while that matters.
	SlowLink func(slow bool)

	// Hold (local patch), when set, paces bulk frames while the link is
	// slow (see SlowLink): before each write of bulk frames the send loop
	// asks it, and waits the duration it returns before asking again; 0
	// lets the write go. Urgent frames (see urgent) go meanwhile, and no
	// bulk frame is written directly by its caller while the link is
	// slow. It runs on the send loop's goroutine only and must bound its
	// own total wait. The tunnel uses it to keep the link's queue short,
	// so that new streams and small exchanges do not wait in a router's
	// queue behind bulk data.
	Hold func() time.Duration

	// DeliverBufferSize (local patch) is the receive loop's buffer for
	// handing frames to a stream's sink (Stream.NotifyReadableOrDeliver):
	// the most of a frame one sink call gets. Match it to what the sink
	// writes in one call; 0 means 256 KiB. A session holds one only while
	// it delivers a frame; the buffers are shared by the process's
	// sessions.
	DeliverBufferSize int

	// ReadBufferSize (local patch) is the receive loop's read buffer on
	// the conn: 0 means 4 KiB, as upstream; negative means none, for a
	// conn that buffers already. A TLS conn holds a whole record, so a
	// buffer over it copies what follows each frame header once more and
	// keeps 4 KiB per session for nothing.
	ReadBufferSize int
}

func (c *Config) Clone() *Config {
	c2 := *c
	return &c2
}

// DefaultConfig is used to return a default configuration
func DefaultConfig() *Config {
	return &Config{
		AcceptBacklog:          256,
		EnableKeepAlive:        true,
		KeepAliveInterval:      30 * time.Second,
		ConnectionWriteTimeout: 10 * time.Second,
		MaxStreamWindowSize:    initialStreamWindow,
		StreamCloseTimeout:     5 * time.Minute,
		StreamOpenTimeout:      75 * time.Second,
		LogOutput:              os.Stderr,
	}
}

// VerifyConfig is used to verify the sanity of configuration
func VerifyConfig(config *Config) error {
	if config.AcceptBacklog <= 0 {
		return fmt.Errorf("backlog must be positive")
	}
	if config.KeepAliveInterval == 0 {
		return fmt.Errorf("keep-alive interval must be positive")
	}
	if config.MaxStreamWindowSize < initialStreamWindow {
		return fmt.Errorf("MaxStreamWindowSize must be larger than %d", initialStreamWindow)
	}
	if config.LogOutput != nil && config.Logger != nil {
		return fmt.Errorf("both Logger and LogOutput may not be set, select one")
	} else if config.LogOutput == nil && config.Logger == nil {
		return fmt.Errorf("one of Logger or LogOutput must be set, select one")
	}
	return nil
}

// Server is used to initialize a new server-side connection.
// There must be at most one server-side connection. If a nil config is
// provided, the DefaultConfiguration will be used.
func Server(conn io.ReadWriteCloser, config *Config) (*Session, error) {
	if config == nil {
		config = DefaultConfig()
	}
	if err := VerifyConfig(config); err != nil {
		return nil, err
	}
	return newSession(config, conn, false), nil
}

// Client is used to initialize a new client-side connection.
// There must be at most one client-side connection.
func Client(conn io.ReadWriteCloser, config *Config) (*Session, error) {
	if config == nil {
		config = DefaultConfig()
	}

	if err := VerifyConfig(config); err != nil {
		return nil, err
	}
	return newSession(config, conn, true), nil
}
