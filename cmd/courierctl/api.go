package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/courier-im/courier/messages/apipb"
)

// apiFlags are the connection settings of every API command.
type apiFlags struct {
	addr    string
	key     string
	keyFile string
	timeout time.Duration
	tls     tlsFlags
	out     io.Writer // the command's standard output
	// keyFlag and keyFileFlag: given on the command line (a flag wins
	// over either variable).
	keyFlag, keyFileFlag bool
	keyResolved          bool
}

func (f *apiFlags) bind(c *cobra.Command) {
	envString(c.Flags(), &f.addr, "api", "COURIERCTL_API", "127.0.0.1:7001", "gRPC API address", false)
	envString(c.Flags(), &f.key, "key", "COURIERCTL_KEY", "", "API key", true)
	envString(c.Flags(), &f.keyFile, "key-file", "COURIERCTL_KEY_FILE", "", "read the API key from this file", false)
	c.Flags().DurationVar(&f.timeout, "timeout", 10*time.Second, "call timeout")
	f.tls.bind(c, "the API", "COURIERCTL_API")
	c.PreRun = func(c *cobra.Command, _ []string) {
		f.out = c.OutOrStdout()
		f.keyFlag, f.keyFileFlag = c.Flags().Changed("key"), c.Flags().Changed("key-file")
	}
}

// resolveKey settles where the key comes from: a flag wins over either
// variable; two sources at the same level are a mistake to name, not a
// choice to make silently (the wrong key only shows as PERMISSION_DENIED).
func (f *apiFlags) resolveKey() error {
	if f.keyResolved {
		return nil
	}
	readFile := false
	switch {
	case f.keyFlag && f.keyFileFlag:
		return usageError{fmt.Errorf("--key and --key-file: give one")}
	case f.keyFlag:
	case f.keyFileFlag:
		readFile = true
	case f.key != "" && f.keyFile != "":
		return usageError{fmt.Errorf("COURIERCTL_KEY and COURIERCTL_KEY_FILE are both set: unset one, or give --key or --key-file")}
	default:
		readFile = f.keyFile != ""
	}
	if readFile {
		b, err := os.ReadFile(f.keyFile)
		if err != nil {
			return fmt.Errorf("--key-file: %w", err)
		}
		f.key = strings.TrimRight(string(b), "\r\n")
	}
	if f.key == "" {
		return usageError{fmt.Errorf("--key, --key-file or COURIERCTL_KEY is required")}
	}
	f.keyResolved = true
	return nil
}

// dial connects and returns a context carrying the key.
func (f *apiFlags) dial() (apipb.CourierClient, context.Context, func(), error) {
	if err := f.resolveKey(); err != nil {
		return nil, nil, nil, err
	}
	creds := insecure.NewCredentials()
	tlsCfg, err := f.tls.config()
	if err != nil {
		return nil, nil, nil, err
	}
	if tlsCfg != nil {
		creds = credentials.NewTLS(tlsCfg)
	}
	// Every app's access lists together may pass gRPC's default 4 MiB
	// (20,000 uids of up to 128 bytes per app).
	conn, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("--api %s: %w", f.addr, err)
	}
	ctx, cancel := f.callCtx()
	return apipb.NewCourierClient(conn), ctx, func() { cancel(); conn.Close() }, nil
}

// callCtx returns a context for one call: --timeout, and the key. A
// command that makes several calls takes one for each, so that a later
// call does not inherit what an earlier one used of the timeout.
func (f *apiFlags) callCtx() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+f.key), cancel
}

// call dials, makes one call and prints its answer as JSON.
func (f *apiFlags) call(do func(context.Context, apipb.CourierClient) (proto.Message, error)) error {
	cl, ctx, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	resp, err := do(ctx, cl)
	if err != nil {
		return err
	}
	printJSON(f.out, resp)
	return nil
}

func printJSON(w io.Writer, m proto.Message) {
	b, _ := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(m)
	var v any
	_ = json.Unmarshal(b, &v)
	out, _ := json.MarshalIndent(v, "", "  ")
	fmt.Fprintln(w, string(out))
}

func pushCmd() *cobra.Command {
	var f apiFlags
	var app, msgtype uint32
	var uids []string
	var payload, key string
	var ttl time.Duration
	var ff bool
	c := &cobra.Command{
		Use:   "push",
		Short: "Push a message to one or more identities",
		Example: `  courierctl push --key KEY --app 1 --uid alice --payload 'order 17 is ready'
  courierctl push --key KEY --app 1 --uid alice --uid bob --payload hi --fire-and-forget`,
		RunE: func(*cobra.Command, []string) error {
			if len(uids) == 0 {
				return usageError{fmt.Errorf("--uid is required")}
			}
			cl, ctx, done, err := f.dial()
			if err != nil {
				return err
			}
			defer done()
			delivery := apipb.Delivery_DELIVERY_STORED
			if ff {
				delivery = apipb.Delivery_DELIVERY_FIRE_AND_FORGET
			}
			req := func(uid string) *apipb.PushRequest {
				return &apipb.PushRequest{AppCode: app, Uid: uid, Msgtype: msgtype, Payload: []byte(payload),
					Delivery: delivery, IdempotencyKey: key, TtlMs: ttl.Milliseconds()}
			}
			if len(uids) == 1 {
				resp, err := cl.Push(ctx, req(uids[0]))
				if err != nil {
					return err
				}
				printJSON(f.out, resp)
				return nil
			}
			many := &apipb.PushManyRequest{}
			for _, u := range uids {
				many.Items = append(many.Items, req(u))
			}
			resp, err := cl.PushMany(ctx, many)
			if err != nil {
				return err
			}
			printJSON(f.out, resp)
			failed := 0
			for _, r := range resp.Results {
				if r.Code != 0 {
					failed++
				}
			}
			if failed > 0 {
				// As a single push that fails: exit 1.
				return fmt.Errorf("%d of %d pushes failed: see their code and error above", failed, len(resp.Results))
			}
			return nil
		},
	}
	f.bind(c)
	c.Flags().Uint32Var(&app, "app", 1, "appcode")
	c.Flags().StringArrayVar(&uids, "uid", nil, "receiver uid (repeat for several: one PushMany call)")
	c.Flags().Uint32Var(&msgtype, "msgtype", 0, "msgtype (business line)")
	c.Flags().StringVar(&payload, "payload", "", "payload (bytes of the string)")
	c.Flags().StringVar(&key, "idempotency-key", "", "idempotency key (a retry with the same key is a no-op)")
	c.Flags().DurationVar(&ttl, "ttl", 0, "expiry (0: the node's default)")
	c.Flags().BoolVar(&ff, "fire-and-forget", false, "deliver only if online now; never stored or retried")
	return c
}

func kickCmd() *cobra.Command {
	var f apiFlags
	var app uint32
	var uid, reason string
	c := &cobra.Command{
		Use:   "kick",
		Short: "End an identity's session (KICKOUT, then close)",
		RunE: func(*cobra.Command, []string) error {
			if uid == "" {
				return usageError{fmt.Errorf("--uid is required")}
			}
			return f.call(func(ctx context.Context, cl apipb.CourierClient) (proto.Message, error) {
				return cl.Kick(ctx, &apipb.KickRequest{AppCode: app, Uid: uid, Reason: reason})
			})
		},
	}
	f.bind(c)
	c.Flags().Uint32Var(&app, "app", 1, "appcode")
	c.Flags().StringVar(&uid, "uid", "", "uid")
	c.Flags().StringVar(&reason, "reason", "kicked by the operator", "detail shown to the device")
	return c
}

func presenceCmd() *cobra.Command {
	var f apiFlags
	var app uint32
	var uids []string
	c := &cobra.Command{
		Use:   "presence",
		Short: "Tell whether identities are online, and where",
		RunE: func(*cobra.Command, []string) error {
			if len(uids) == 0 {
				return usageError{fmt.Errorf("--uid is required")}
			}
			return f.call(func(ctx context.Context, cl apipb.CourierClient) (proto.Message, error) {
				return cl.Presence(ctx, &apipb.PresenceRequest{AppCode: app, Uids: uids})
			})
		},
	}
	f.bind(c)
	c.Flags().Uint32Var(&app, "app", 1, "appcode")
	c.Flags().StringArrayVar(&uids, "uid", nil, "uid (repeatable)")
	return c
}

func listsCmd() *cobra.Command {
	var f apiFlags
	var app uint32
	c := &cobra.Command{
		Use:   "lists",
		Short: "Show the gate's black/white lists",
		RunE: func(*cobra.Command, []string) error {
			return f.call(func(ctx context.Context, cl apipb.CourierClient) (proto.Message, error) {
				return cl.GetAccessLists(ctx, &apipb.GetAccessListsRequest{AppCode: app})
			})
		},
	}
	f.bind(c)
	c.Flags().Uint32Var(&app, "app", 0, "appcode (0: all with an operator key, the key's own app with an app's key)")
	for _, verb := range []string{"add", "remove"} {
		c.AddCommand(listEditCmd(verb))
	}
	return c
}

func listEditCmd(verb string) *cobra.Command {
	var f apiFlags
	var app uint32
	var list string
	c := &cobra.Command{
		Use:   verb + " ENTRY...",
		Short: strings.ToUpper(verb[:1]) + verb[1:] + " entries of a list (ip-blacklist, ip-whitelist, uid-blacklist)",
		Args:  minArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			kinds := map[string]apipb.AccessList{
				"ip-blacklist": apipb.AccessList_IP_BLACKLIST, "ip-whitelist": apipb.AccessList_IP_WHITELIST,
				"uid-blacklist": apipb.AccessList_UID_BLACKLIST,
			}
			kind, ok := kinds[list]
			if !ok {
				return usageError{fmt.Errorf("--list %q: want ip-blacklist, ip-whitelist or uid-blacklist", list)}
			}
			cl, ctx, done, err := f.dial()
			if err != nil {
				return err
			}
			defer done()
			req := &apipb.UpdateAccessListRequest{List: kind, AppCode: app}
			if verb == "add" {
				req.Add = args
			} else {
				req.Remove = args
			}
			resp, err := cl.UpdateAccessList(ctx, req)
			if err != nil {
				return err
			}
			printJSON(f.out, resp)
			return nil
		},
	}
	f.bind(c)
	c.Flags().Uint32Var(&app, "app", 1, "appcode (uid-blacklist)")
	c.Flags().StringVar(&list, "list", "uid-blacklist", "ip-blacklist, ip-whitelist or uid-blacklist")
	return c
}

// maxRecvBytes bounds an answer courierctl takes from a node.
const maxRecvBytes = 256 << 20
