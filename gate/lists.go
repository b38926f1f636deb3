package gate

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/courier-im/courier/gate/internal/ipset"
)

// ListsSnapshot is the whole of a gate's black and white lists. It is also
// the format of Config.ListsFile, as JSON:
//
//	{
//	  "whitelist_mode": false,
//	  "ip_whitelist": ["10.0.0.0/8", "192.168.1.20"],
//	  "ip_blacklist": ["203.0.113.7", "198.51.100.0/24", "2001:db8::/32"],
//	  "uid_blacklist": {"1": ["spammer-42"], "2": ["u9", "u10"]}
//	}
//
// Every field may be left out. Unknown fields are an error (a typo must
// not silently open the gate). IP entries are addresses or CIDR prefixes,
// IPv4 or IPv6; uid_blacklist is keyed by appcode.
type ListsSnapshot struct {
	// WhitelistMode admits only source addresses in IPWhitelist (internal
	// deployments). Otherwise every address not in IPBlacklist is admitted.
	// IPBlacklist applies in both modes.
	WhitelistMode bool     `json:"whitelist_mode,omitempty"`
	IPWhitelist   []string `json:"ip_whitelist,omitempty"`
	IPBlacklist   []string `json:"ip_blacklist,omitempty"`
	// UIDBlacklist maps an appcode to uids refused at LOGIN.
	UIDBlacklist map[uint16][]string `json:"uid_blacklist,omitempty"`
}

func (s ListsSnapshot) clone() ListsSnapshot {
	c := ListsSnapshot{
		WhitelistMode: s.WhitelistMode,
		IPWhitelist:   slices.Clone(s.IPWhitelist),
		IPBlacklist:   slices.Clone(s.IPBlacklist),
	}
	if s.UIDBlacklist != nil {
		c.UIDBlacklist = make(map[uint16][]string, len(s.UIDBlacklist))
		for app, uids := range s.UIDBlacklist {
			c.UIDBlacklist[app] = slices.Clone(uids)
		}
	}
	return c
}

// ParseListsSnapshot decodes the JSON format of ListsSnapshot strictly.
func ParseListsSnapshot(b []byte) (ListsSnapshot, error) {
	var s ListsSnapshot
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return ListsSnapshot{}, fmt.Errorf("%w: %v", ErrBadLists, err)
	}
	if _, err := compileLists(s); err != nil {
		return ListsSnapshot{}, err
	}
	return s, nil
}

// compiledLists is the form the event loops read (immutable).
type compiledLists struct {
	src           ListsSnapshot
	whitelistMode bool
	white, black  *ipset.Set
	uids          map[uint16]map[string]struct{}
}

func compileLists(s ListsSnapshot) (*compiledLists, error) {
	white, err := ipset.Parse(s.IPWhitelist)
	if err != nil {
		return nil, fmt.Errorf("%w: ip_whitelist: %v", ErrBadLists, err)
	}
	black, err := ipset.Parse(s.IPBlacklist)
	if err != nil {
		return nil, fmt.Errorf("%w: ip_blacklist: %v", ErrBadLists, err)
	}
	c := &compiledLists{src: s.clone(), whitelistMode: s.WhitelistMode, white: white, black: black,
		uids: make(map[uint16]map[string]struct{}, len(s.UIDBlacklist))}
	for app, uids := range s.UIDBlacklist {
		set := make(map[string]struct{}, len(uids))
		for _, u := range uids {
			if u == "" || len(u) > maxUIDLen {
				return nil, fmt.Errorf("%w: uid_blacklist[%d]: bad uid %q", ErrBadLists, app, u)
			}
			set[u] = struct{}{}
		}
		c.uids[app] = set
	}
	return c, nil
}

// ipDenied says whether a may not connect, and by which list.
func (c *compiledLists) ipDenied(a netip.Addr) (bool, string) {
	if c.black.Contains(a) {
		return true, listIPBlacklist
	}
	if c.whitelistMode && !c.white.Contains(a) {
		return true, listIPNotWhitelisted
	}
	return false, ""
}

func (c *compiledLists) uidBlocked(app uint16, uid string) bool {
	_, ok := c.uids[app][uid]
	return ok
}

// Lists are a gate's black and white lists, changeable while it runs. An
// update applies to new connections and logins at once, and closes the
// existing connections it now refuses (KICKOUT, then CloseBlocked). A
// change of Config.ListsFile replaces the whole lists, whatever was set
// through Update or Modify before. Lists are safe for concurrent use.
type Lists struct {
	g   *Gate
	cur atomic.Pointer[compiledLists]

	mu       sync.Mutex // serializes updates
	fileHash [sha256.Size]byte
	fileErr  string // last file error logged, to log each new one once
}

// Snapshot returns a copy of the current lists.
func (l *Lists) Snapshot() ListsSnapshot { return l.cur.Load().src.clone() }

// Update replaces the lists with s. It returns an error wrapping
// ErrBadLists, and changes nothing, if an entry does not parse.
func (l *Lists) Update(s ListsSnapshot) error { return l.update(s, "api") }

// FileFailed counts a lists file that its owner (a node that keeps the
// lists in its store and reads the file itself) could not apply, as the
// gate counts its own Config.ListsFile's: courier_gate_list_updates_total
// with source file and result error.
func (l *Lists) FileFailed() { l.g.metrics.listReloads.WithLabelValues("file", "error").Inc() }

// update is Update with the source named in logs and metrics.
func (l *Lists) update(s ListsSnapshot, source string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.updateLocked(s, source)
}

// Modify applies f to a copy of the current lists and stores the result,
// atomically with respect to other updates (no lost update between a
// Snapshot and an Update).
func (l *Lists) Modify(f func(*ListsSnapshot)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := l.cur.Load().src.clone()
	f(&s)
	return l.updateLocked(s, "api")
}

func (l *Lists) updateLocked(s ListsSnapshot, source string) error {
	c, err := compileLists(s)
	if err != nil {
		l.g.metrics.listReloads.WithLabelValues(source, "error").Inc()
		return err
	}
	l.cur.Store(c)
	l.g.metrics.listReloads.WithLabelValues(source, "ok").Inc()
	l.g.metrics.setListSizes(c)
	l.g.log.Info("gate: lists updated", "source", source, "whitelist_mode", c.whitelistMode,
		"ip_whitelist", c.white.Len(), "ip_blacklist", c.black.Len(), "uid_blacklist_apps", len(c.uids))
	l.g.enforceLists()
	return nil
}

// loadFile reads Config.ListsFile and applies it if its content changed.
// With initial set, any error is returned; later errors are logged and
// counted, and the current lists stay.
func (l *Lists) loadFile(path string, initial bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, err := os.ReadFile(path)
	if err == nil {
		sum := sha256.Sum256(b)
		if !initial && sum == l.fileHash {
			return nil
		}
		var s ListsSnapshot
		if s, err = ParseListsSnapshot(b); err == nil {
			if err = l.updateLocked(s, "file"); err == nil {
				l.fileHash, l.fileErr = sum, ""
				return nil
			}
		}
	}
	if initial {
		return fmt.Errorf("%w: Config.ListsFile: %v", ErrBadLists, err)
	}
	if msg := err.Error(); msg != l.fileErr {
		l.fileErr = msg
		l.g.metrics.listReloads.WithLabelValues("file", "error").Inc()
		l.g.log.Warn("gate: lists file not applied; keeping the current lists", "path", path, "err", err)
	}
	return err
}

// watchLists polls Config.ListsFile until quit is closed.
func (g *Gate) watchLists(quit <-chan struct{}) {
	defer g.wg.Done()
	t := time.NewTicker(g.cfg.ListsPollInterval)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case <-t.C:
			_ = g.lists.loadFile(g.cfg.ListsFile, false)
		}
	}
}

// UIDBlocked reports whether uid of app is on the uid blacklist.
func (l *Lists) UIDBlocked(app uint16, uid string) bool { return l.cur.Load().uidBlocked(app, uid) }
