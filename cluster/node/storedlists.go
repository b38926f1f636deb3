package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/courier-im/courier/actors/store"
	"github.com/courier-im/courier/cluster/api"
	"github.com/courier-im/courier/gate"
	"github.com/courier-im/courier/messages/apipb"
)

// listsPoll is how often a node looks for a lists change another node
// stored: a change made through any node's API is in force on every node
// within about this long.
const listsPoll = time.Second

// listsDoc is the stored form of the access lists (JSON): the lists and,
// if they came from the lists file, the SHA-256 of that file's content.
type listsDoc struct {
	Lists gate.ListsSnapshot `json:"lists"`
	// FileSHA256 is the hash of the lists file these lists were last
	// replaced with. At start, a file with the same content does not
	// replace the lists (API changes made since stay); a file with
	// another content does.
	FileSHA256 string `json:"file_sha256,omitempty"`
}

// durableLists are the gate's lists kept in the store: the store's
// document is the truth, the gate applies it. A change through the API
// is stored (compare-and-set on the document's version) before the gate
// applies it and before the API answers; every node polls the version.
// The cluster-wide lists (lists.go) store API changes through it.
type durableLists struct {
	st   store.Store
	gate *gate.Lists
	log  *slog.Logger
	file string // gate.lists-file, "" if none

	mu       sync.Mutex // serializes changes and the poll
	version  uint64     // of the document the gate applies
	fileSHA  string     // of the document the gate applies
	localSHA string     // of the lists file as this node last read it
	// The recording (Record), under recMu, which is never held for a
	// store's call.
	recMu     sync.Mutex
	recID     uint64
	recording bool
	recent    []*apipb.UpdateAccessListRequest
}

// start loads the stored lists, lets a changed lists file replace them,
// and applies the result to the gate. It fails if the store cannot be
// read: a node must not admit devices the lists refuse.
func (l *durableLists) start(ctx context.Context, initial gate.ListsSnapshot) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, doc, err := l.read(ctx)
	if err != nil {
		return fmt.Errorf("node: loading the access lists from the store: %w", err)
	}
	if v == 0 {
		doc.Lists = initial
	}
	if l.file != "" {
		return l.syncFileLocked(ctx, true)
	}
	if err := l.gate.Update(doc.Lists); err != nil {
		return fmt.Errorf("node: the stored access lists (version %d): %w", v, err)
	}
	l.version, l.fileSHA = v, doc.FileSHA256
	return nil
}

func (l *durableLists) read(ctx context.Context) (uint64, listsDoc, error) {
	v, b, err := l.st.Lists(ctx)
	if err != nil || v == 0 {
		return v, listsDoc{}, err
	}
	var doc listsDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		return 0, listsDoc{}, fmt.Errorf("corrupt lists document (version %d): %w", v, err)
	}
	return v, doc, nil
}

// Snapshot implements api.Lists.
func (l *durableLists) Snapshot() gate.ListsSnapshot { return l.gate.Snapshot() }

// Modify implements api.Lists: it applies f to the stored lists and
// stores the result, retrying if another node stored a change meanwhile.
// When it returns nil the change is durable and in force on this node.
// It fails with an error wrapping gate.ErrBadLists if the result does not
// parse, or store.ErrUnavailable.
func (l *durableLists) Modify(f func(*gate.ListsSnapshot)) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.modifyLocked(f)
}

// modifyLocked is Modify under l.mu.
func (l *durableLists) modifyLocked(f func(*gate.ListsSnapshot)) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		v, doc, err := l.read(ctx)
		if err != nil {
			return err
		}
		if v == 0 {
			doc.Lists = l.gate.Snapshot()
		}
		f(&doc.Lists)
		b, err := json.Marshal(doc.Lists)
		if err == nil {
			_, err = gate.ParseListsSnapshot(b)
		}
		if err != nil {
			return err
		}
		if err := l.storeLocked(ctx, v, doc); errors.Is(err, store.ErrConflict) && ctx.Err() == nil {
			continue
		} else if err != nil {
			return err
		}
		return nil
	}
}

// Record has the edits this node applies from now on (Edit) kept until
// the Replace of this recording, and returns the recording's id: a gate
// with lists of its own calls it before it can be reached again (at
// start, at the loss of its lease), so that a copy of another gate's
// lists that missed them does not undo them. A new recording ends the
// last (its edits are in the lists already). It does not block: the loss
// of the lease calls it on the membership's goroutine.
func (l *durableLists) Record() uint64 {
	l.recMu.Lock()
	defer l.recMu.Unlock()
	l.recID++
	l.recording, l.recent = true, nil
	return l.recID
}

// Recording returns the id of the recording on, 0 if none.
func (l *durableLists) Recording() uint64 {
	l.recMu.Lock()
	defer l.recMu.Unlock()
	if !l.recording {
		return 0
	}
	return l.recID
}

// Edit applies an edit another node sent (api.ApplyListEdit), stores it,
// and keeps it while recording (Record).
func (l *durableLists) Edit(e *apipb.UpdateAccessListRequest) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.modifyLocked(func(s *gate.ListsSnapshot) { api.ApplyListEdit(s, e) }); err != nil {
		return err
	}
	l.recMu.Lock()
	if l.recording {
		l.recent = append(l.recent, e)
	}
	l.recMu.Unlock()
	return nil
}

// Replace ends recording id: it stores s, with the edits kept since
// Record applied over it in their order, as the lists, and applies them.
// It changes nothing if id is not the recording on (a later one began:
// the lease was lost again, and that one's copy will come), or if s is
// nil (the copy failed: the node keeps its own lists).
func (l *durableLists) Replace(id uint64, s *gate.ListsSnapshot) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.recMu.Lock()
	if !l.recording || l.recID != id {
		l.recMu.Unlock()
		return nil
	}
	recent := l.recent
	l.recording, l.recent = false, nil
	l.recMu.Unlock()
	if s == nil {
		return nil
	}
	return l.modifyLocked(func(cur *gate.ListsSnapshot) {
		*cur = *s
		for _, e := range recent {
			api.ApplyListEdit(cur, e)
		}
	})
}

// storeLocked stores doc over version prev and applies it.
func (l *durableLists) storeLocked(ctx context.Context, prev uint64, doc listsDoc) error {
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	v, err := l.st.SetLists(ctx, prev, b)
	if err != nil {
		return err
	}
	l.version, l.fileSHA = v, doc.FileSHA256
	return l.gate.Update(doc.Lists)
}

// run polls the store (and the lists file) until quit is closed.
func (l *durableLists) run(quit <-chan struct{}, filePoll time.Duration) {
	t := time.NewTicker(listsPoll)
	defer t.Stop()
	var fileTick <-chan time.Time
	if l.file != "" {
		ft := time.NewTicker(filePoll)
		defer ft.Stop()
		fileTick = ft.C
	}
	fileErr := "" // the last lists-file error counted
	for {
		select {
		case <-quit:
			return
		case <-t.C:
			if err := l.poll(); err != nil {
				l.log.Warn("node: reading the stored access lists", "err", err)
			}
		case <-fileTick:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			l.mu.Lock()
			err := l.syncFileLocked(ctx, false)
			l.mu.Unlock()
			cancel()
			// Counted and logged once per error, as the gate does with
			// its own file: a file missing for an hour is one failure.
			if err == nil {
				fileErr = ""
			} else if msg := err.Error(); msg != fileErr {
				fileErr = msg
				l.gate.FileFailed()
				l.log.Warn("node: lists file not applied; keeping the current lists", "path", l.file, "err", err)
			}
		}
	}
}

// poll applies a version another node stored.
func (l *durableLists) poll() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l.mu.Lock()
	defer l.mu.Unlock()
	v, doc, err := l.read(ctx)
	if err != nil || v == l.version {
		return err
	}
	if err := l.gate.Update(doc.Lists); err != nil {
		return fmt.Errorf("version %d: %w", v, err)
	}
	l.version, l.fileSHA = v, doc.FileSHA256
	return nil
}

// syncFileLocked stores the lists file's content as the lists if it
// differs from the file the current lists came from: at start, and later
// when the file changes on this node (a node does not undo another's
// newer file with its own older one while both run). At start any error
// is returned; later a file that does not parse keeps the current lists.
func (l *durableLists) syncFileLocked(ctx context.Context, initial bool) error {
	b, err := os.ReadFile(l.file)
	if err != nil {
		if initial {
			return asConfigError(fmt.Errorf("node: gate.lists-file: %w", err))
		}
		return err
	}
	sum := sha256.Sum256(b)
	sha := hex.EncodeToString(sum[:])
	if !initial && sha == l.localSHA {
		return nil
	}
	v, doc, err := l.read(ctx)
	if err != nil {
		return err
	}
	if v != 0 && doc.FileSHA256 == sha {
		l.localSHA = sha
		if initial {
			if err := l.gate.Update(doc.Lists); err != nil {
				return err
			}
			l.version, l.fileSHA = v, sha
		}
		return nil
	}
	s, err := gate.ParseListsSnapshot(b)
	if err != nil {
		if initial {
			return asConfigError(fmt.Errorf("node: gate.lists-file %s: %w", l.file, err))
		}
		l.localSHA = sha // logged once per content
		return err
	}
	if err := l.storeLocked(ctx, v, listsDoc{Lists: s, FileSHA256: sha}); err != nil {
		return err
	}
	l.localSHA = sha
	l.log.Info("node: the lists file replaced the access lists", "path", l.file, "version", l.version)
	return nil
}
