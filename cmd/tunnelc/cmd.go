package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/cli"
	"github.com/tunnel-dev/tunnel/internal/client"
	"github.com/tunnel-dev/tunnel/internal/config"
)

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "tunnelc",
		Short:         "tunnel client: serves local services on a tunneld's public ports",
		Version:       cli.VersionLine(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newUp(), newCheck(), newStatus(), cli.ReloadCommand("tunnelc"))
	return root
}

func load(path string) (*config.Client, error) {
	if path == "" {
		return nil, &cli.ExitError{Code: cli.ExitConfig, Err: errors.New("no config: pass -c tunnel.toml (see configs/tunnel.toml)")}
	}
	cfg, err := config.LoadClient(path)
	if err != nil {
		return nil, &cli.ExitError{Code: cli.ExitConfig, Err: err}
	}
	return cfg, nil
}

func newUp() *cobra.Command {
	var path, logLevel, cpuprofile string
	cmd := &cobra.Command{
		Use:   "up",
		Short: "connect to the server and serve the configured tunnels",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := load(path)
			if err != nil {
				return err
			}
			log, level, err := cli.Logger(cmd.ErrOrStderr(), cfg.Log, logLevel)
			if err != nil {
				return err
			}
			stopProfile, err := cli.CPUProfile(cpuprofile)
			if err != nil {
				return err
			}
			defer stopProfile()
			c, err := client.New(cfg, log)
			if err != nil {
				return err
			}
			ctx, stop := cli.SignalContext()
			defer stop()
			// Before anything can take a while: SIGHUP's default is to
			// end the process.
			reloader := cli.NewReloader(log, func() (any, error) {
				next, err := load(path)
				if err != nil {
					return nil, err
				}
				res, err := c.Reload(next)
				if err == nil {
					level.Apply(next.Log)
				}
				return res, err
			}, c.StatusLine)
			waitReload := reloader.OnSignal(ctx)
			defer waitReload()
			waitAdmin := func() error { return nil }
			if cfg.Admin.Enabled() {
				adm := admin.New(cfg.Admin, log)
				if err := adm.Start(); err != nil {
					return &cli.ExitError{Code: cli.ExitConfig, Err: fmt.Errorf("%s: %w", cfg.File, err)}
				}
				c.ServeAdmin(adm, cli.Version)
				cli.ServeReload(adm, reloader)
				done := make(chan error, 1)
				go func() { done <- adm.Serve(ctx) }()
				waitAdmin = func() error { return <-done }
			}
			// As in tunneld: the status signal is handled before "started"
			// is logged and systemd told.
			waitStatus := cli.StatusOnSignal(ctx, log, func() []any {
				st := c.Status()
				attrs := []any{"connected", st.Connected, "session", st.Session, "tunnels", len(st.Public), "sessions_since_start", st.Sessions,
					"pending", len(st.Pending)}
				for name, why := range st.Pending {
					attrs = append(attrs, "pending."+name, why)
				}
				return attrs
			})
			log.Info("tunnelc started", "version", cli.Version, "config", cfg.File, "server", cfg.Server)
			wait := cli.Notify(ctx, log, c.StatusLine, func() error { c.Status(); return nil })
			err = c.Run(ctx)
			stop()
			wait()
			waitStatus()
			if aerr := waitAdmin(); aerr != nil {
				log.Error("admin endpoint failed", "err", aerr)
			}
			if err != nil {
				code := cli.ExitFailure
				var pe *client.PermanentError
				if errors.As(err, &pe) {
					code = cli.ExitRefused
				}
				return &cli.ExitError{Code: code, Err: err}
			}
			log.Info("tunnelc stopped")
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (required)")
	cmd.Flags().StringVar(&logLevel, "log-level", "", "override the config's log level (debug, info, warn, error)")
	cmd.Flags().StringVar(&cpuprofile, "cpuprofile", "", "write a CPU profile to this file")
	_ = cmd.Flags().MarkHidden("cpuprofile")
	return cmd
}

func newCheck() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "check",
		Short: "validate a config and print what would run",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := load(path)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "%s: ok\n", cfg.File)
			fmt.Fprintf(w, "server          %s as %q\n", cfg.Server, cfg.Name)
			fmt.Fprintf(w, "tls             %s\n", cfg.TLS.Describe())
			for _, name := range cfg.TunnelNames() {
				t := cfg.Tunnels[name]
				pp := ""
				if t.ProxyProtocol != "" {
					pp = ", PROXY " + t.ProxyProtocol
				}
				if t.Type != config.TypeTCP {
					names := append([]string(nil), t.Hostnames...)
					if t.Subdomain != "" {
						names = append([]string{t.Subdomain + ".<server's domains>"}, names...)
					}
					paths := ""
					if len(t.Locations) > 0 {
						paths = fmt.Sprintf(" paths %v", t.Locations)
					}
					fmt.Fprintf(w, "tunnel %-8s %s: %s%s -> %s%s\n", name, t.Type, strings.Join(names, ", "), paths, t.Local, pp)
					continue
				}
				rp := fmt.Sprint(t.RemotePort)
				if t.RemotePort == 0 {
					rp = "any (server picks)"
				}
				fmt.Fprintf(w, "tunnel %-8s %s: public port %s -> %s%s\n", name, t.Type, rp, t.Local, pp)
			}
			ks := cfg.KeepAlive.Session
			fmt.Fprintf(w, "session         keepalive %s/%s/%d (dead idle path found within %s), user_timeout %s, heartbeat every %s (timeout %s)\n",
				ks.Idle.D(), ks.Interval.D(), ks.Count, ks.Sock().Bound(), ks.UserTimeout.D(), ks.HeartbeatInterval.D(), ks.HeartbeatTimeout.D())
			kl := cfg.KeepAlive.Local
			fmt.Fprintf(w, "local leg       keepalive %s/%s/%d (dead idle peer found within %s)\n", kl.Idle.D(), kl.Interval.D(), kl.Count, kl.Sock().Bound())
			fmt.Fprintf(w, "reconnect       backoff %s .. %s, full jitter\n", cfg.Reconnect.MinDelay.D(), cfg.Reconnect.MaxDelay.D())
			return nil
		},
	}
	cmd.Flags().StringVarP(&path, "config", "c", "", "config file (required)")
	return cmd
}
