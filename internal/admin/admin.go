// Package admin serves a daemon's admin endpoint, and is the client the
// status, kick and reload commands use to reach it: JSON over HTTP on a
// unix socket (mode 0600) or a TCP address, with health probes and
// Prometheus metrics beside the JSON.
//
// It knows nothing of tunnels: the daemon registers what it serves
// (Handle). It must never serve off loopback without a token; config
// validation refuses such a config, and Start refuses it again.
package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/tunnel-dev/tunnel/internal/config"
)

// Error is an answer other than success: an HTTP status and what to tell
// the caller. A handler's other errors are 500s.
type Error struct {
	Status int
	Msg    string
}

func (e *Error) Error() string { return e.Msg }

// NotFound and BadRequest build the usual Errors.
func NotFound(format string, args ...any) error {
	return &Error{http.StatusNotFound, fmt.Sprintf(format, args...)}
}

func BadRequest(format string, args ...any) error {
	return &Error{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// Func answers one JSON request: what it returns is encoded as the body.
type Func func(r *http.Request) (any, error)

// Server is one daemon's admin endpoint.
type Server struct {
	cfg  config.Admin
	log  *slog.Logger
	mux  *http.ServeMux
	ln   net.Listener
	http *http.Server
}

// maxBody bounds a request body: actions take a reason at most.
const maxBody = 64 << 10

// headerTimeout bounds the wait for a request's headers: a peer that
// connects and says nothing (or one byte at a time) is closed after it.
var headerTimeout = 5 * time.Second

// New prepares an endpoint for cfg, which must be enabled and validated.
func New(cfg config.Admin, log *slog.Logger) *Server {
	s := &Server{cfg: cfg, log: log.With("admin", cfg.Where()), mux: http.NewServeMux()}
	s.http = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: headerTimeout,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	s.profiles(cfg.Pprof)
	return s
}

// profiles serves Go's runtime profiles under /debug/pprof/ when on: where
// a long-running daemon's memory, goroutines and CPU go, read with `go
// tool pprof`. They are behind the token like everything but the probes.
// When off, the path says how to turn them on rather than a bare 404.
func (s *Server) profiles(on bool) {
	if !on {
		s.Handle("/debug/pprof/", func(*http.Request) (any, error) {
			return nil, NotFound("profiles are off: set pprof = true in [admin] and restart the daemon")
		})
		return
	}
	s.mux.HandleFunc("GET /debug/pprof/", pprof.Index) // and each named profile: heap, goroutine, ...
	s.mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	s.mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	s.mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
}

// Handle serves f at pattern (net/http's: "GET /v1/status").
func (s *Server) Handle(pattern string, f Func) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		v, err := f(r)
		if err != nil {
			var ae *Error
			if !errors.As(err, &ae) {
				s.log.Error("admin request failed", "path", r.URL.Path, "err", err)
				ae = &Error{http.StatusInternalServerError, err.Error()}
			}
			writeJSON(w, ae.Status, map[string]string{"error": ae.Msg})
			return
		}
		writeJSON(w, http.StatusOK, v)
	})
}

// HandleHTTP serves h at pattern as it is (metrics).
func (s *Server) HandleHTTP(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// Probes serves /healthz (live: the daemon answers and is not stuck) and
// /readyz (it does its job: listeners bound, a session up). They need no
// token: load balancers and orchestrators ask them.
func (s *Server) Probes(live, ready func() error) {
	probe := func(check func() error) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Header().Set("Cache-Control", "no-store")
			if err := check(); err != nil {
				w.WriteHeader(http.StatusServiceUnavailable)
				fmt.Fprintf(w, "not ok: %v\n", err)
				return
			}
			io.WriteString(w, "ok\n")
		}
	}
	s.mux.Handle("GET /healthz", probe(live))
	s.mux.Handle("GET /readyz", probe(ready))
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// ServeHTTP checks the token, when there is one, for all but the probes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Token != "" && r.URL.Path != "/healthz" && r.URL.Path != "/readyz" {
		got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.Token)) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="tunnel admin"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong admin token (Authorization: Bearer TOKEN)"})
			return
		}
	}
	s.mux.ServeHTTP(w, r)
}

// Start binds the endpoint. A unix socket is made with mode 0600; a
// stale one (its daemon gone) is replaced, a live one is an error.
func (s *Server) Start() error {
	if s.cfg.Address != "" {
		host, _, _ := net.SplitHostPort(s.cfg.Address)
		if ip := net.ParseIP(host); (ip == nil || !ip.IsLoopback()) && s.cfg.Token == "" {
			return fmt.Errorf("admin.address %s: not loopback and no admin.token: refusing to serve the admin API", s.cfg.Address)
		}
		ln, err := net.Listen("tcp", s.cfg.Address)
		if err != nil {
			return fmt.Errorf("admin.address: %w", err)
		}
		s.ln = ln
	} else {
		ln, err := listenUnix(s.cfg.Socket)
		if err != nil {
			return fmt.Errorf("admin.socket: %w", err)
		}
		s.ln = ln
	}
	s.log.Info("admin endpoint listening", "addr", s.ln.Addr().String(), "token", s.cfg.Token != "")
	return nil
}

// Addr is the bound address (after Start).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve answers requests until ctx ends, then stops: requests in
// progress get a second to finish. The socket file is removed.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if s.http.Shutdown(sctx) != nil {
			s.http.Close()
		}
	})
	defer stop()
	err := s.http.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("admin endpoint: %w", err)
}

// Decode reads a request's JSON body into v; no body leaves v as it is.
// A bad or oversized body is a BadRequest.
func Decode(r *http.Request, v any) error {
	err := json.NewDecoder(r.Body).Decode(v)
	if err == nil || errors.Is(err, io.EOF) {
		return nil
	}
	return BadRequest("request body: %v", err)
}
