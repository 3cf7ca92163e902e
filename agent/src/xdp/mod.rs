//! Loading the XDP program, its maps, and the typed handles the agent writes through.

pub mod bpffs;
mod mmap;
pub mod test_run;
pub mod v4table;
pub mod v6table;

use std::{
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
};
use prefilter_common::{
    ABI_VERSION, AddrKey, LOG_LEVEL_GLOBAL, PROG_NAME, config,
    config::{Config, Settings},
    counters,
    counters::Stats,
    dynamic,
    dynamic::DynVerdict,
    ports, v4, v6,
};

use self::{mmap::Mmap, v4table::V4Table, v6table::V6Table};

/// Errors while loading or driving the XDP program.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    /// The object did not load (verifier, map creation, permissions).
    #[error("loading the XDP program failed")]
    Load(#[source] aya::EbpfError),
    /// The object has no XDP program of this agent's map ABI (another build's object).
    #[error("the XDP object has no program {PROG_NAME} (an object of another map ABI?)")]
    MissingProgram,
    /// A map the object must have is missing or of another type.
    #[error("the XDP object has no usable map {name}")]
    MissingMap {
        /// Map name.
        name: &'static str,
        #[source]
        source: Option<MapError>,
    },
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// Map name.
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// The program could not be loaded or attached.
    #[error("XDP program: {0}")]
    Program(#[from] ProgramError),
    /// mmap of a table failed.
    #[error("mapping {name} into memory: {source}")]
    Mmap {
        /// Map name.
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A pinned XDP link could not be used or created.
    #[error("XDP link {path}: {message}")]
    Link {
        /// Pin path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Pinned maps belong to another layout.
    #[error("pinned maps under {dir} have ABI {found}, this agent uses {ABI_VERSION}")]
    AbiMismatch {
        /// Pin directory.
        dir: PathBuf,
        /// ABI found in the pinned config map.
        found: u32,
    },
}

/// Map sizes and load-time settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Groups for IPv4 /24s holding several verdicts (40 bytes each, plus their share of
    /// the run verdicts); a /24 with one host in otherwise unlisted space needs none.
    pub v4_long_groups: u32,
    /// Capacity of each of the IPv6 table's two hashes: /17–/64 entries, /65–/128 entries.
    pub v6_entries: u32,
    /// Capacity of the dynamic verdict map.
    pub dynamic_entries: u32,
    /// aya-log level compiled into the loaded program: 0 = off (no cost), 1 error .. 5 trace.
    pub log_level: u8,
    /// Pin maps here (bpffs); none for a private instance (tests, bench).
    pub pin_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            v4_long_groups: v4::DEFAULT_GROUPS,
            v6_entries: v6::DEFAULT_ENTRIES,
            dynamic_entries: dynamic::DEFAULT_ENTRIES,
            log_level: 0,
            pin_dir: None,
        }
    }
}

/// Maps pinned and adopted across agent restarts. The prefix tables are not among them:
/// they are rebuilt from the store at every start into fresh maps, and the pinned XDP link
/// is then switched to the new program atomically, so there is never a half-filled table in
/// force and no bookkeeping to recover from kernel memory.
const PINNED_MAPS: &[&str] = &[
    config::MAP,
    dynamic::MAP,
    prefilter_common::ratelimit::MAP,
    counters::MAP,
    prefilter_common::events::MAP,
    prefilter_common::events::SEEN,
];

/// The loaded program and its maps.
pub struct Filter {
    ebpf: Ebpf,
    /// The IPv4 prefix table.
    pub v4: V4Table,
    /// The IPv6 prefix table.
    pub v6: V6Table,
    config: Config,
    dynamic: HashMap<MapData, AddrKey, DynVerdict>,
    /// The judged ports as last written.
    ports: Vec<u16>,
    /// Whether the maps were adopted from pins rather than created.
    pub adopted: bool,
    kernel_view: Option<KernelView>,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, FilterError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(FilterError::MissingMap { name, source: None })?;
    T::try_from(map).map_err(|e| FilterError::MissingMap {
        name,
        source: Some(e),
    })
}

/// A second descriptor of map `name`, so that a reader owns a handle of its own.
fn dup_map(ebpf: &Ebpf, name: &'static str) -> Result<MapData, FilterError> {
    let map = ebpf
        .map(name)
        .ok_or(FilterError::MissingMap { name, source: None })?;
    let data = match map {
        Map::PerCpuArray(d) | Map::Array(d) | Map::HashMap(d) | Map::LruHashMap(d) => d,
        _ => return Err(FilterError::MissingMap { name, source: None }),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| FilterError::Mmap { name, source })?;
    MapData::from_fd(fd).map_err(|source| FilterError::Map { name, source })
}

fn typed_dup<T>(ebpf: &Ebpf, name: &'static str, wrap: fn(MapData) -> Map) -> Result<T, FilterError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(wrap(dup_map(ebpf, name)?)).map_err(|e| FilterError::MissingMap {
        name,
        source: Some(e),
    })
}

/// Bytes of a table of `1 << bits` `T`s, as a map size: at most 512 MiB, as
/// `v6::MAX_ENTRIES` bounds it.
fn map_bytes<T>(bits: u32) -> u32 {
    u32::try_from((1usize << bits) * size_of::<T>()).expect("table size bounded by MAX_ENTRIES")
}

fn mmap_of(ebpf: &Ebpf, name: &'static str, len: usize) -> Result<Mmap, FilterError> {
    let Some(Map::Array(data)) = ebpf.map(name) else {
        return Err(FilterError::MissingMap { name, source: None });
    };
    Mmap::map(data.fd().as_fd(), len).map_err(|source| FilterError::Mmap { name, source })
}

impl Filter {
    /// Loads the embedded object: creates (or, with `pin_dir`, adopts) the maps and loads
    /// the program into the kernel, not attached anywhere yet.
    pub fn load(opts: &Options) -> Result<Self, FilterError> {
        Self::load_object(opts, crate::EBPF_OBJECT)
    }

    /// [`Filter::load`] with another build of the program (same map ABI): the bench's
    /// side-by-side comparison of two builds (`bench --ab`).
    pub fn load_object(opts: &Options, object: &[u8]) -> Result<Self, FilterError> {
        let hx_bits = v6::hx_bits(opts.v6_entries);
        let hh_bits = v6::hh_bits(opts.v6_entries);
        // HX and HH are the program's global data (one value each): their size is given in
        // bytes (vendor/README.md), and mapped whole.
        let hx_bytes = map_bytes::<v6::Bucket>(hx_bits);
        let hh_bytes = map_bytes::<v6::HostBucket>(hh_bits);
        let (hx_shape, hh_shape) = (v6::Shape::of(hx_bits), v6::Shape::of(hh_bits));
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(v4::GROUPS, v4::group_slots(opts.v4_long_groups))
            .map_max_entries(v4::RUNS, v4::runs_entries(opts.v4_long_groups))
            .map_max_entries(v6::HX, hx_bytes)
            .override_global(v6::HX_SHAPE_GLOBAL, &hx_shape, true)
            .map_max_entries(v6::HH, hh_bytes)
            .override_global(v6::HH_SHAPE_GLOBAL, &hh_shape, true)
            .map_max_entries(dynamic::MAP, opts.dynamic_entries)
            .override_global(LOG_LEVEL_GLOBAL, &opts.log_level, true);
        let mut adopted = false;
        if let Some(dir) = &opts.pin_dir {
            adopted = check_pins(dir)?;
            resize_dynamic(dir, opts.dynamic_entries);
            for name in PINNED_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(object).map_err(FilterError::Load)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROG_NAME)
            .ok_or(FilterError::MissingProgram)?
            .try_into()?;
        prog.load()?;

        let tbl24 = mmap_of(
            &ebpf,
            v4::TBL24,
            (v4::TBL24_CHUNKS as usize) * size_of::<v4::Chunk24>(),
        )?;
        let slots = v4::group_slots(opts.v4_long_groups);
        let groups = mmap_of(&ebpf, v4::GROUPS, slots as usize * size_of::<v4::Group>())?;
        let runs = mmap_of(
            &ebpf,
            v4::RUNS,
            v4::runs_entries(opts.v4_long_groups) as usize * size_of::<v4::Runs>(),
        )?;
        let v4 = V4Table::new(tbl24, groups, runs, opts.v4_long_groups, slots);
        let hx = std::sync::Arc::new(mmap_of(&ebpf, v6::HX, hx_bytes as usize)?);
        let hh = std::sync::Arc::new(mmap_of(&ebpf, v6::HH, hh_bytes as usize)?);
        let top = std::sync::Arc::new(mmap_of(
            &ebpf,
            v6::TOP,
            v6::TOP_ENTRIES as usize * size_of::<v6::Entry>(),
        )?);
        let odd = std::sync::Arc::new(mmap_of(&ebpf, v6::ODD, size_of::<v6::OddLengths>())?);
        let kernel_view = KernelView {
            counters: typed_dup(&ebpf, counters::MAP, Map::PerCpuArray)?,
            dynamic: typed_dup(&ebpf, dynamic::MAP, Map::LruHashMap)?,
            v4: v4.view(),
            v6: v6table::V6View::new(v6table::V6Maps::new(
                top.clone(),
                (hx.clone(), hx_bits),
                (hh.clone(), hh_bits),
                odd.clone(),
            )),
        };
        let v6_maps = v6table::V6Maps::new(top, (hx, hx_bits), (hh, hh_bits), odd);
        let v6 = V6Table::new(v6_maps, opts.v6_entries);
        let dynamic = take(&mut ebpf, dynamic::MAP)?;
        let mut filter = Self {
            ebpf,
            v4,
            v6,
            config: Config::default(),
            dynamic,
            ports: ports::DEFAULT.to_vec(),
            adopted,
            kernel_view: Some(kernel_view),
        };
        // The record a previous agent left (its dynamic entry count above all), or fresh
        // defaults; either way copied into this program's settings.
        let record = filter.read_config()?;
        filter.set_config(if record.abi == 0 {
            Config {
                abi: ABI_VERSION,
                ..Config::default()
            }
        } else {
            record
        })?;
        Ok(filter)
    }

    /// Map `name` as the typed map `M` (an array, a per-CPU array...).
    fn typed<'a, M>(&'a mut self, name: &'static str) -> Result<M, FilterError>
    where
        M: TryFrom<&'a mut Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(FilterError::MissingMap { name, source: None })?;
        M::try_from(map).map_err(|e| FilterError::MissingMap {
            name,
            source: Some(e),
        })
    }

    fn config_map(&mut self) -> Result<Array<&mut MapData, Config>, FilterError> {
        self.typed(config::MAP)
    }

    /// The pinned record of the settings (all zeros in fresh maps).
    fn read_config(&mut self) -> Result<Config, FilterError> {
        self.config_map()?
            .get(&0, 0)
            .map_err(|source| FilterError::Map {
                name: config::MAP,
                source,
            })
    }

    /// Writes the program's settings: the config and the ports as last set.
    fn write_settings(&mut self) -> Result<(), FilterError> {
        let s = Settings::new(self.config, &self.ports);
        let mut arr = self.typed::<Array<_, Settings>>(config::SETTINGS_MAP)?;
        arr.set(0, s, 0).map_err(|source| FilterError::Map {
            name: config::SETTINGS_MAP,
            source,
        })
    }

    /// The program, to attach it.
    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROG_NAME)
            .expect("loaded")
            .try_into()
            .expect("an XDP program")
    }

    /// File descriptor of the loaded program (for BPF_PROG_TEST_RUN).
    pub fn program_fd(&self) -> BorrowedFd<'_> {
        let p: &Xdp = self
            .ebpf
            .program(PROG_NAME)
            .expect("loaded")
            .try_into()
            .expect("an XDP program");
        p.fd().expect("loaded").as_fd()
    }

    /// Attaches to `iface` in native mode, falling back to skb (generic) mode unless
    /// `force` names a mode. Returns the mode in use.
    pub fn attach(&mut self, iface: &str, force: Option<XdpMode>) -> Result<XdpMode, FilterError> {
        self.attach_id(iface, force).map(|(mode, _)| mode)
    }

    fn attach_id(
        &mut self,
        iface: &str,
        force: Option<XdpMode>,
    ) -> Result<(XdpMode, XdpLinkId), FilterError> {
        let prog = self.program();
        if let Some(mode) = force {
            return Ok((mode, prog.attach(iface, mode)?));
        }
        match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => Ok((XdpMode::Driver, id)),
            Err(native) => {
                log::warn!("{iface}: native XDP refused ({native}), using skb mode");
                Ok((XdpMode::Skb, prog.attach(iface, XdpMode::Skb)?))
            }
        }
    }

    /// Attaches to `iface` through the link pinned at `pin`: if one is pinned (a previous
    /// agent, maybe of another version), its program is replaced atomically, so SYNs are
    /// judged without a gap; otherwise a new link is attached and pinned. Returns the mode,
    /// or None when an existing link was adopted (it keeps the mode it was created with).
    pub fn attach_pinned(
        &mut self,
        iface: &str,
        force: Option<XdpMode>,
        pin: &Path,
    ) -> Result<Option<XdpMode>, FilterError> {
        if pin.exists() {
            match PinnedLink::from_pin(pin) {
                Ok(pinned) => {
                    let link =
                        XdpLink::try_from(FdLink::from(pinned)).map_err(|e| FilterError::Link {
                            path: pin.to_owned(),
                            message: e.to_string(),
                        })?;
                    let prog = self.program();
                    match prog.attach_to_link(link) {
                        Ok(id) => {
                            // Keep only the pin as owner, so unpinning is all a detach takes.
                            drop(prog.take_link(id)?);
                            return Ok(None);
                        }
                        // The interface the link held went away (deleted and created again,
                        // a driver reload): the kernel cut the link, and nothing filters
                        // the new interface until a fresh link does.
                        Err(ProgramError::SyscallError(e))
                            if e.io_error.raw_os_error() == Some(libc::ENOLINK) =>
                        {
                            log::warn!(
                                "{}: the pinned link lost its interface ({}), attaching anew",
                                pin.display(),
                                e.io_error
                            );
                            let _ = std::fs::remove_file(pin);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Err(e) => {
                    // Not a link (stale file): replace it.
                    log::warn!(
                        "{}: not a usable pinned link ({e}), attaching anew",
                        pin.display()
                    );
                    let _ = std::fs::remove_file(pin);
                }
            }
        }
        let (mode, id) = self.attach_id(iface, force)?;
        let link = self.program().take_link(id)?;
        let fd = FdLink::try_from(link).map_err(|e| FilterError::Link {
            path: pin.to_owned(),
            message: format!("{iface}: XDP attached without a BPF link ({e}); cannot pin"),
        })?;
        fd.pin(pin).map_err(|e| FilterError::Link {
            path: pin.to_owned(),
            message: e.to_string(),
        })?;
        Ok(Some(mode))
    }

    /// The runtime configuration in force.
    pub fn config(&self) -> Config {
        self.config
    }

    /// Replaces the runtime configuration: the pinned record, then the program's copy.
    /// Each CPU's event budget is in its stats, which this leaves alone: this runs on every
    /// new dynamic verdict, and a budget refilled each time would let a flood that brings
    /// DNSBL hits report far more than its events per second.
    pub fn set_config(&mut self, c: Config) -> Result<(), FilterError> {
        let c = Config {
            abi: ABI_VERSION,
            ..c
        };
        self.config_map()?
            .set(0, c, 0)
            .map_err(|source| FilterError::Map {
                name: config::MAP,
                source,
            })?;
        self.config = c;
        self.write_settings()
    }

    /// Sets the judged destination ports to exactly `list`.
    pub fn set_ports(&mut self, list: &[u16]) -> Result<(), FilterError> {
        self.ports = list.to_vec();
        self.write_settings()
    }

    /// Adds or replaces a dynamic verdict.
    pub fn set_dynamic(&mut self, key: AddrKey, v: DynVerdict) -> Result<(), FilterError> {
        let new = self.dynamic(&key).is_none();
        self.dynamic
            .insert(key, v, 0)
            .map_err(|source| FilterError::Map {
                name: dynamic::MAP,
                source,
            })?;
        if new {
            self.set_dyn_count(self.config.dyn_entries.saturating_add(1))?;
        }
        Ok(())
    }

    /// Removes a dynamic verdict; returns whether it was there.
    pub fn remove_dynamic(&mut self, key: &AddrKey) -> Result<bool, FilterError> {
        let had = match self.dynamic.remove(key) {
            Ok(()) => true,
            Err(MapError::KeyNotFound) => false,
            Err(source) => {
                return Err(FilterError::Map {
                    name: dynamic::MAP,
                    source,
                });
            }
        };
        if had {
            self.set_dyn_count(self.config.dyn_entries.saturating_sub(1))?;
        }
        Ok(had)
    }

    /// The dynamic verdict for a key, as the kernel holds it.
    pub fn dynamic(&self, key: &AddrKey) -> Option<DynVerdict> {
        self.dynamic.get(key, 0).ok()
    }

    /// Keeps the "dynamic map not empty" hint for the program, which skips the lookup at 0.
    /// Entries the kernel expires or evicts leave it too high, which only costs a lookup;
    /// it is never too low, since only the agent inserts.
    fn set_dyn_count(&mut self, n: u32) -> Result<(), FilterError> {
        let c = Config {
            dyn_entries: n,
            ..self.config
        };
        self.set_config(c)
    }

    /// Every CPU's stats (counters, list hits, event budget).
    fn stats_map(&self) -> Result<PerCpuArray<&MapData, Stats>, FilterError> {
        let name = counters::MAP;
        let map = self
            .ebpf
            .map(name)
            .ok_or(FilterError::MissingMap { name, source: None })?;
        PerCpuArray::try_from(map).map_err(|e| FilterError::MissingMap {
            name,
            source: Some(e),
        })
    }

    /// Counters summed over CPUs: the (reason, action) matrix plus the event slots.
    pub fn counters(&self) -> Result<Vec<u64>, FilterError> {
        summed_stats(&self.stats_map()?)
    }

    /// Block hits per list id, summed over CPUs (only non-zero ones).
    pub fn list_hits(&self) -> Result<Vec<(u16, u64)>, FilterError> {
        Ok(summed_hits(&self.stats_map()?)?
            .into_iter()
            .enumerate()
            .filter(|&(_, n)| n != 0)
            .map(|(i, n)| (i as u16, n))
            .collect())
    }

    /// A reader of the program's aya-log records (forwarded to the `log` facade), when the
    /// program was loaded with logging on; without a reader its log ring fills and stops.
    pub fn logger(&mut self) -> Option<aya_log::EbpfLogger<&'static dyn log::Log>> {
        match aya_log::EbpfLogger::init(&mut self.ebpf) {
            Ok(l) => Some(l),
            Err(e) => {
                log::warn!("XDP program logs unavailable: {e}");
                None
            }
        }
    }

    /// Takes the event ring buffer (once) for a reader.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, FilterError> {
        take(&mut self.ebpf, prefilter_common::events::MAP)
    }

    /// Read-only handles on the kernel side (second file descriptors of the same maps, the
    /// same IPv4 mappings), for readers that must never wait on the writer. Made once, at
    /// load: the typed map handles aya hands out do not expose their descriptors.
    pub fn take_kernel_view(&mut self) -> Option<KernelView> {
        self.kernel_view.take()
    }

    /// Kernel memory charged for the program's maps, in bytes: the `memlock` figures that
    /// `bpftool map show` reports, summed.
    pub fn map_memlock(&mut self) -> std::io::Result<u64> {
        let ids = self
            .program()
            .info()
            .and_then(|i| i.map_ids())
            .map_err(std::io::Error::other)?
            .unwrap_or_default();
        let mut total = 0;
        for id in ids {
            let map = MapData::from_id(id).map_err(std::io::Error::other)?;
            let fd = map.fd().as_fd().as_raw_fd();
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
            total += info
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(total)
    }

    /// Runs the program on a frame (BPF_PROG_TEST_RUN).
    pub fn test_run(&self, frame: &[u8], repeat: u32) -> std::io::Result<test_run::TestRun> {
        test_run::run(self.program_fd(), frame, repeat)
    }
}

/// What readers (metrics, `check`, events) see of the kernel, without the writer's lock.
pub struct KernelView {
    counters: PerCpuArray<MapData, Stats>,
    dynamic: HashMap<MapData, AddrKey, DynVerdict>,
    /// The IPv4 table as the program reads it.
    pub v4: v4table::V4View,
    /// The IPv6 table as the program reads it.
    pub v6: v6table::V6View,
}

/// A slice of every CPU's stats (`part`), summed slot by slot.
fn summed_part<T: std::borrow::Borrow<MapData>>(
    arr: &PerCpuArray<T, Stats>,
    part: fn(&Stats) -> &[u64],
) -> Result<Vec<u64>, FilterError> {
    let each = arr.get(&0, 0).map_err(|source| FilterError::Map {
        name: counters::MAP,
        source,
    })?;
    let mut sum: Vec<u64> = Vec::new();
    for cpu in each.iter() {
        let slots = part(cpu);
        sum.resize(slots.len(), 0);
        for (s, n) in sum.iter_mut().zip(slots) {
            *s += n;
        }
    }
    Ok(sum)
}

/// The counter slots of every CPU's stats, summed.
fn summed_stats<T: std::borrow::Borrow<MapData>>(
    arr: &PerCpuArray<T, Stats>,
) -> Result<Vec<u64>, FilterError> {
    summed_part(arr, |s| &s.n)
}

/// The list hits of every CPU's stats, summed: indexed by list id.
fn summed_hits<T: std::borrow::Borrow<MapData>>(
    arr: &PerCpuArray<T, Stats>,
) -> Result<Vec<u64>, FilterError> {
    summed_part(arr, |s| &s.hits)
}

impl KernelView {
    /// Counters summed over CPUs: the (reason, action) matrix plus the event slots.
    pub fn counters(&self) -> Result<Vec<u64>, FilterError> {
        summed_stats(&self.counters)
    }

    /// Block hits per list id, summed over CPUs (all ids, zeros included).
    pub fn list_hits(&self) -> Result<Vec<u64>, FilterError> {
        summed_hits(&self.counters)
    }

    /// The dynamic verdict for a key, as the kernel holds it.
    pub fn dynamic(&self, key: &AddrKey) -> Option<DynVerdict> {
        self.dynamic.get(key, 0).ok()
    }

    /// What the program finds for source `ip` (IPv4-mapped already unmapped): the prefix
    /// tables' packed verdict, and the key of its dynamic entry (the IPv4 address, or the
    /// IPv6 /64, see FLAG_V6_FULL).
    pub fn lookup(&self, ip: std::net::IpAddr) -> (u16, AddrKey) {
        match ip {
            std::net::IpAddr::V4(a) => (
                self.v4.lookup(a.into()),
                prefilter_common::v4_key(a.octets()),
            ),
            std::net::IpAddr::V6(a) => {
                let mut k = a.octets();
                k[8..].fill(0);
                (self.v6.lookup(a.into()), k)
            }
        }
    }
}

/// Removes the pinned link of `pin`; the XDP program leaves the interface once no agent
/// holds it either. Returns whether a link was pinned there.
pub fn detach_pinned(pin: &Path) -> std::io::Result<bool> {
    if !pin.exists() {
        return Ok(false);
    }
    let link = PinnedLink::from_pin(pin).map_err(std::io::Error::other)?;
    drop(link.unpin()?);
    Ok(true)
}

/// Maps earlier ABIs pinned that this one no longer has (the judged ports, until ABI 7 a
/// map; the list hits, now in the counters' value): removed with the others at an upgrade,
/// or their pins would hold the kernel memory for good.
const RETIRED_PINS: &[&str] = &["PF_PORTS", "PF_LIST_HITS"];

/// Removes pinned maps of another ABI. The program still attached keeps its own maps
/// alive through its link until the link is switched to the new program.
pub fn remove_map_pins(dir: &Path) -> std::io::Result<()> {
    for name in PINNED_MAPS.iter().chain(RETIRED_PINS) {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// A pinned map keeps the size it was created with; when `[limits] dynamic_entries` changed,
/// the pinned dynamic map is let go so the new size applies. Its verdicts are learned again.
fn resize_dynamic(dir: &Path, wanted: u32) {
    let path = dir.join(dynamic::MAP);
    let Ok(data) = MapData::from_pin(&path) else {
        return;
    };
    if let Ok(info) = data.info()
        && info.max_entries() != wanted
    {
        log::warn!(
            "dynamic verdict map holds {} entries, the config asks for {wanted}: replacing it",
            info.max_entries()
        );
        let _ = std::fs::remove_file(&path);
    }
}

/// Whether `dir` already holds our pinned maps; errors if they are of another ABI.
fn check_pins(dir: &Path) -> Result<bool, FilterError> {
    let path = dir.join(config::MAP);
    if !path.exists() {
        return Ok(false);
    }
    let data = MapData::from_pin(&path).map_err(|source| FilterError::Map {
        name: config::MAP,
        source,
    })?;
    let info = data.info().map_err(|source| FilterError::Map {
        name: config::MAP,
        source,
    })?;
    // Maps of ABI 4 to 6 held the config in a per-CPU array with the event budget: another
    // layout, found as 0 (as is any other).
    let found = if info.value_size() as usize == size_of::<Config>()
        && matches!(info.map_type(), Ok(aya::maps::MapType::Array))
    {
        let arr =
            Array::<_, Config>::try_from(Map::Array(data)).map_err(|source| FilterError::Map {
                name: config::MAP,
                source,
            })?;
        arr.get(&0, 0).map(|c| c.abi).unwrap_or(0)
    } else {
        0
    };
    if found != ABI_VERSION {
        return Err(FilterError::AbiMismatch {
            dir: dir.to_owned(),
            found,
        });
    }
    Ok(true)
}
