package main

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/cli"
	"github.com/tunnel-dev/tunnel/internal/config"
	"github.com/tunnel-dev/tunnel/internal/server"
	"github.com/tunnel-dev/tunnel/internal/tlsconf"
)

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "tunneld",
		Short:         "tunnel server: exposes services of tunnelc clients on public ports",
		Version:       cli.VersionLine(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServe(), newCheck(), newFingerprint(), newStatus(), newKick(), newUnban(), newCloseConn(), newDrain(), cli.ReloadCommand("tunneld"))
	return root
}

type flags struct {
	config     string
	logLevel   string
	listen     string
	bindAddr   string
	cpuprofile string
}

func (f *flags) load() (*config.Server, error) {
	cfg, err := config.LoadServer(f.config)
	if err != nil {
		return nil, &cli.ExitError{Code: cli.ExitConfig, Err: err}
	}
	if f.listen != "" || f.bindAddr != "" {
		if f.listen != "" {
			cfg.Listen = f.listen
		}
		if f.bindAddr != "" {
			cfg.BindAddr = f.bindAddr
		}
		if err := cfg.Validate(nil); err != nil {
			return nil, &cli.ExitError{Code: cli.ExitConfig, Err: fmt.Errorf("--listen/--bind-addr: %w", err)}
		}
	}
	return cfg, nil
}

func newServe() *cobra.Command {
	var f flags
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "run the server (embedded defaults without -c)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			log, level, err := cli.Logger(cmd.ErrOrStderr(), cfg.Log, f.logLevel)
			if err != nil {
				return err
			}
			generated := cfg.Token == "" && len(cfg.Clients) == 0
			if generated {
				cfg.Token = randomToken()
			}
			stopProfile, err := cli.CPUProfile(f.cpuprofile)
			if err != nil {
				return err
			}
			defer stopProfile()
			srv, err := server.New(cfg, log)
			if err != nil {
				return err
			}
			if generated {
				printToken(cmd.ErrOrStderr(), cfg, srv.Fingerprint())
			}
			ctx, stop := cli.SignalContext()
			defer stop()
			// Before anything can take a while: SIGHUP's default is to
			// end the process.
			reloader := cli.NewReloader(log, func() (any, error) {
				next, err := f.load()
				if err != nil {
					return nil, err
				}
				res, err := srv.Reload(next)
				if err == nil {
					level.Apply(next.Log)
				}
				return res, err
			}, srv.StatusLine)
			waitReload := reloader.OnSignal(ctx)
			defer waitReload()
			var adm *admin.Server
			if cfg.Admin.Enabled() {
				// Bound before the session port (see admin.listenUnix),
				// served once the server has started.
				adm = admin.New(cfg.Admin, log)
				if err := adm.Start(); err != nil {
					return &cli.ExitError{Code: cli.ExitConfig, Err: fmt.Errorf("%s: %w", cfg.File, err)}
				}
			}
			if err := srv.Start(ctx); err != nil {
				return err
			}
			waitAdmin := func() error { return nil }
			if adm != nil {
				srv.ServeAdmin(adm, cli.Version)
				cli.ServeReload(adm, reloader)
				done := make(chan error, 1)
				go func() { done <- adm.Serve(ctx) }()
				waitAdmin = func() error { return <-done }
			}
			// The status signal is handled before "started" is logged and
			// systemd told: a SIGUSR1 sent on either is answered, not
			// dropped.
			waitStatus := cli.StatusOnSignal(ctx, log, func() []any { return []any{"sessions", srv.Sessions(), "pending_tunnels", len(srv.Pending())} })
			log.Info("tunneld started", "version", cli.Version, "config", cfg.File)
			wait := cli.Notify(ctx, log, srv.StatusLine, func() error { srv.Sessions(); return nil })
			err = srv.Serve(ctx)
			stop()
			wait()
			waitStatus()
			if aerr := waitAdmin(); err == nil {
				err = aerr
			}
			if err != nil {
				return err
			}
			log.Info("tunneld stopped")
			return nil
		},
	}
	cmd.Flags().StringVarP(&f.config, "config", "c", "", "config file (default: embedded defaults)")
	cmd.Flags().StringVar(&f.logLevel, "log-level", "", "override the config's log level (debug, info, warn, error)")
	cmd.Flags().StringVar(&f.listen, "listen", "", "override the config's session address (host:port)")
	cmd.Flags().StringVar(&f.bindAddr, "bind-addr", "", "override the config's address for public listeners")
	cmd.Flags().StringVar(&f.cpuprofile, "cpuprofile", "", "write a CPU profile to this file")
	_ = cmd.Flags().MarkHidden("cpuprofile")
	return cmd
}

func newCheck() *cobra.Command {
	var f flags
	cmd := &cobra.Command{
		Use:   "check",
		Short: "validate a config and print what would run",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s: ok\n", cfg.File)
			fmt.Fprintf(w, "sessions on     %s\n", cfg.Listen)
			fmt.Fprintf(w, "tls             %s\n", cfg.TLS.Describe(cfg.StateDir))
			fmt.Fprintf(w, "public ports    %v on %s, reported as %s\n", cfg.Ports, cfg.BindAddr, cfg.AdvertisedHost())
			switch {
			case len(cfg.Clients) > 0:
				for _, e := range cfg.Clients {
					auth := "token"
					if !e.HasToken() {
						auth = "certificate only"
					} else if cfg.TLS.ClientCAFile != "" {
						auth = "certificate and token"
					}
					conns := func(n int) string {
						if n == 0 {
							return "unlimited"
						}
						return fmt.Sprint(n)
					}
					fmt.Fprintf(w, "client %-8s %s; ports %v, at most %d tunnels, connections %s (per tunnel %s)\n",
						e.Name, auth, e.Ports, e.MaxTunnels, conns(e.MaxConnections), conns(e.MaxConnectionsPerTunnel))
				}
			case cfg.Token == "":
				fmt.Fprintf(w, "token           none: a random one is generated at start\n")
			default:
				fmt.Fprintf(w, "token           configured, shared by all clients (names are self-declared)\n")
			}
			ks := cfg.KeepAlive.Session
			fmt.Fprintf(w, "session         keepalive %s/%s/%d (dead idle path found within %s), user_timeout %s, heartbeat every %s (timeout %s)\n",
				ks.Idle.D(), ks.Interval.D(), ks.Count, ks.Sock().Bound(), ks.UserTimeout.D(), ks.HeartbeatInterval.D(), ks.HeartbeatTimeout.D())
			if cfg.Web.Enabled() {
				fmt.Fprintf(w, "web             http %s, https %s, domains %v, terminates TLS: %v\n", orOff(cfg.Web.HTTPAddr), orOff(cfg.Web.HTTPSAddr),
					cfg.Web.Domains, cfg.Web.CertFile != "")
			}
			if len(cfg.Proxies) > 0 {
				fmt.Fprintf(w, "trusted proxies %v (their PROXY headers name the client)\n", cfg.Proxies)
			}
			kp := cfg.KeepAlive.Public
			fmt.Fprintf(w, "public leg      keepalive %s/%s/%d (dead idle peer found within %s)\n", kp.Idle.D(), kp.Interval.D(), kp.Count, kp.Sock().Bound())
			return nil
		},
	}
	cmd.Flags().StringVarP(&f.config, "config", "c", "", "config file (default: embedded defaults)")
	return cmd
}

func orOff(s string) string {
	if s == "" {
		return "off"
	}
	return s
}

func randomToken() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// printToken tells the operator the generated token and how to connect.
func printToken(w io.Writer, cfg *config.Server, fingerprint string) {
	_, port, _ := net.SplitHostPort(cfg.Listen)
	p, _ := strconv.Atoi(port)
	fmt.Fprintf(w, "\nNo token configured: generated one for this run.\n"+
		"  token: %s\n"+
		"Connect a client with this in tunnel.toml:\n"+
		"  server = %q\n", cfg.Token, net.JoinHostPort(cfg.AdvertisedHost(), strconv.Itoa(p)))
	if fingerprint != "" && cfg.TLS.Auto() {
		fmt.Fprintf(w, "  [tls]\n  fingerprint = %q\n", fingerprint)
	}
	fmt.Fprintf(w, "and run:\n  TUNNEL_TOKEN=%s tunnelc up -c tunnel.toml\n\n", cfg.Token)
	_ = os.Stderr.Sync()
}

func newFingerprint() *cobra.Command {
	var f flags
	cmd := &cobra.Command{
		Use:   "fingerprint",
		Short: "print the SHA-256 fingerprint of the server's TLS certificate, for clients to pin",
		Long: "Prints the fingerprint of the certificate serve presents. With no cert_file configured that is\n" +
			"the automatic certificate in state_dir, made now if serve has not made it yet. Clients trust\n" +
			"it with fingerprint = \"sha256:...\" under [tls] in tunnel.toml.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := f.load()
			if err != nil {
				return err
			}
			var der []byte
			switch {
			case !cfg.TLS.Enabled():
				return &cli.ExitError{Code: cli.ExitConfig, Err: fmt.Errorf("%s: tls = \"off\": sessions have no certificate", cfg.File)}
			case !cfg.TLS.Auto():
				cert, err := tls.LoadX509KeyPair(cfg.TLS.CertFile, cfg.TLS.KeyFile)
				if err != nil {
					return &cli.ExitError{Code: cli.ExitConfig, Err: fmt.Errorf("%s: tls.cert_file: %w", cfg.File, err)}
				}
				der = cert.Certificate[0]
			case cfg.StateDir == "":
				return &cli.ExitError{Code: cli.ExitConfig, Err: fmt.Errorf("%s: no state_dir, so serve makes a new certificate at every start and there is none to pin: set state_dir (or run under systemd, which sets STATE_DIRECTORY)", cfg.File)}
			default:
				cert, _, err := server.AutoCert(cfg)
				if err != nil {
					return err
				}
				der = cert.Certificate[0]
			}
			fmt.Fprintln(cmd.OutOrStdout(), tlsconf.Fingerprint(der))
			return nil
		},
	}
	cmd.Flags().StringVarP(&f.config, "config", "c", "", "config file (default: embedded defaults)")
	return cmd
}
