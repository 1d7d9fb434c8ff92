package cli

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/tunnel-dev/tunnel/internal/admin"
	"github.com/tunnel-dev/tunnel/internal/config"
)

// AdminCommand makes a command of daemon's that asks the running daemon
// through its admin endpoint: it takes -c (the config the daemon runs
// with; only its [admin] is read, so a config that no longer validates
// still finds it) and --admin (a socket path or host:port), and runs do
// with a client for the endpoint.
func AdminCommand(daemon string, cmd *cobra.Command, do func(cmd *cobra.Command, c *admin.Client, args []string) error) *cobra.Command {
	var path, flag string
	cmd.Flags().StringVarP(&path, "config", "c", "", "the config "+daemon+" runs with (its [admin] says where to ask)")
	cmd.Flags().StringVar(&flag, "admin", "", "the admin endpoint: a socket path or host:port (default: the config's [admin])")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		a := config.Admin{Token: os.Getenv("TUNNEL_ADMIN_TOKEN")}
		file := "no config (-c)"
		if path != "" {
			var err error
			file = path
			if a, err = config.LoadAdmin(path); err != nil && flag == "" {
				return &ExitError{Code: ExitConfig, Err: err}
			}
		}
		c, err := AdminClient(file, a, flag)
		if err != nil {
			return err
		}
		defer c.Close()
		return AdminError(do(cmd, c, args))
	}
	return cmd
}

// ReloadCommand is daemon's reload command.
func ReloadCommand(daemon string) *cobra.Command {
	return AdminCommand(daemon, &cobra.Command{
		Use:   "reload",
		Short: fmt.Sprintf("make the running %s re-read its config (as SIGHUP does) and print what changed", daemon),
		Args:  cobra.NoArgs,
	}, func(cmd *cobra.Command, c *admin.Client, _ []string) error {
		return AskReload(cmd.Context(), c, cmd.OutOrStdout())
	})
}
