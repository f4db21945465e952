//! Where an export's files go: onto the disk, gzip-compressed where the name says so, or
//! only into digests for `verify`; and reading them back a line at a time.

use super::*;

/// Where the export's files go: into the folder on disk (the export), or nowhere (verify,
/// which makes every file again from the folder's inputs and compares digests). Either way
/// the SHA-256 of each file's content (before any compression) is kept, and what was
/// written is remembered for the manifest. A file whose name ends in `.gz` is written
/// gzip-compressed; appending to it adds a gzip member, which decompresses to the
/// concatenation (RFC 1952).
pub(crate) struct Folder {
    pub(crate) root: PathBuf,
    on_disk: bool,
    pub(crate) written: Vec<String>,
    content: BTreeMap<String, Arc<Mutex<Digesting>>>,
}

/// The digest of a file's content as it is made.
#[derive(Default)]
pub(crate) struct Digesting {
    hasher: Sha256,
    bytes: u64,
}

/// The end of a file's bytes: hashed as content, then written to the file (compressed or
/// not) or nowhere.
pub(crate) struct Sink {
    content: Arc<Mutex<Digesting>>,
    out: SinkOut,
}

pub(crate) enum SinkOut {
    File(std::fs::File),
    Gzip(flate2::write::GzEncoder<std::fs::File>),
    Nowhere,
}

impl std::io::Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let written = match &mut self.out {
            SinkOut::File(file) => file.write(bytes)?,
            SinkOut::Gzip(encoder) => encoder.write(bytes)?,
            SinkOut::Nowhere => bytes.len(),
        };
        let mut digesting = self
            .content
            .lock()
            .expect("a digest is never left mid-update");
        digesting.hasher.update(&bytes[..written]);
        digesting.bytes += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            SinkOut::File(file) => file.flush(),
            SinkOut::Gzip(encoder) => encoder.flush(),
            SinkOut::Nowhere => Ok(()),
        }
    }
}

impl Sink {
    /// Ends the file: a compressed one gets its gzip trailer.
    pub(crate) fn finish(self) -> std::io::Result<()> {
        match self.out {
            SinkOut::File(mut file) => std::io::Write::flush(&mut file),
            SinkOut::Gzip(encoder) => encoder.finish().map(drop),
            SinkOut::Nowhere => Ok(()),
        }
    }
}

/// Whether `relative` names a file inside a folder: `/`-separated plain names, none empty,
/// none starting with a dot (so no `.`, `..` or hidden file), no backslash or drive colon.
/// Every path the export writes and every path `verify` reads from a manifest passes this.
pub fn is_inside_path(relative: &str) -> bool {
    !relative.is_empty()
        && relative
            .split('/')
            .all(|part| !part.is_empty() && !part.starts_with('.') && !part.contains(['\\', ':']))
}

/// A file of the export written a piece at a time, so no file is ever held in memory whole.
/// A CSV file goes through the CSV writer (quoting), any other file as raw bytes.
pub(crate) struct Streamed {
    path: PathBuf,
    writer: StreamedWriter,
}

pub(crate) enum StreamedWriter {
    Raw(std::io::BufWriter<Sink>),
    Csv(Box<csv::Writer<Sink>>),
}

impl Streamed {
    pub(crate) fn new(path: PathBuf, sink: Sink, is_csv: bool) -> Self {
        let writer = if is_csv {
            // The CSV writer buffers on its own.
            StreamedWriter::Csv(Box::new(csv::Writer::from_writer(sink)))
        } else {
            StreamedWriter::Raw(std::io::BufWriter::new(sink))
        };
        Streamed { path, writer }
    }

    pub(crate) fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let StreamedWriter::Raw(writer) = &mut self.writer else {
            bail!("{} is a CSV file", self.path.display());
        };
        std::io::Write::write_all(writer, bytes)
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    /// One JSON line.
    pub(crate) fn jsonl<T: Serialize>(&mut self, row: &T) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(row)?;
        line.push(b'\n');
        self.write(&line)
    }

    /// One CSV record, its cells rendered (text neutralised).
    pub(crate) fn csv(&mut self, cells: Vec<Cell>) -> anyhow::Result<()> {
        let StreamedWriter::Csv(writer) = &mut self.writer else {
            bail!("{} is not a CSV file", self.path.display());
        };
        writer
            .write_record(cells.into_iter().map(Cell::render))
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    pub(crate) fn finish(self) -> anyhow::Result<()> {
        let path = self.path;
        let sink = match self.writer {
            StreamedWriter::Raw(writer) => writer.into_inner().map_err(|error| error.into_error()),
            StreamedWriter::Csv(writer) => writer.into_inner().map_err(|error| error.into_error()),
        };
        sink.and_then(Sink::finish)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Folder {
    /// Files written into `root` on disk.
    pub(crate) fn on_disk(root: PathBuf) -> Folder {
        Folder {
            root,
            on_disk: true,
            written: Vec::new(),
            content: BTreeMap::new(),
        }
    }

    /// Files only digested, never written.
    pub(crate) fn digesting() -> Folder {
        Folder {
            root: PathBuf::new(),
            on_disk: false,
            written: Vec::new(),
            content: BTreeMap::new(),
        }
    }

    /// The SHA-256 (hex) and length of each file's content (uncompressed).
    pub(crate) fn digests(&self) -> BTreeMap<String, (String, u64)> {
        self.content
            .iter()
            .map(|(path, digesting)| {
                let digesting = digesting.lock().expect("a digest is never left mid-update");
                (
                    path.clone(),
                    (
                        hex::encode(digesting.hasher.clone().finalize()),
                        digesting.bytes,
                    ),
                )
            })
            .collect()
    }

    /// The path of a file inside the folder, its parent created.
    pub(crate) fn path_of(&self, relative: &str) -> anyhow::Result<PathBuf> {
        // File names come from identifiers (statements, reconciliations): refuse anything
        // that could leave the folder, whatever made it.
        if !is_inside_path(relative) {
            bail!(
                "refusing to write {relative:?}: it does not name a file inside the export folder"
            );
        }
        let path = self.root.join(relative);
        if self.on_disk
            && let Some(parent) = path.parent()
        {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        Ok(path)
    }

    /// Where a file's bytes go: a new file (`create`) or the end of one made before.
    pub(crate) fn sink(&mut self, relative: &str, create: bool) -> anyhow::Result<(PathBuf, Sink)> {
        let path = self.path_of(relative)?;
        let content = if create {
            self.written.push(relative.to_owned());
            let content = Arc::new(Mutex::new(Digesting::default()));
            self.content.insert(relative.to_owned(), content.clone());
            content
        } else {
            self.content
                .get(relative)
                .with_context(|| format!("{relative} was not made before"))?
                .clone()
        };
        let out = if !self.on_disk {
            SinkOut::Nowhere
        } else {
            let file = if create {
                std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?
            } else {
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?
            };
            if relative.ends_with(".gz") {
                SinkOut::Gzip(flate2::write::GzEncoder::new(
                    file,
                    flate2::Compression::default(),
                ))
            } else {
                SinkOut::File(file)
            }
        };
        Ok((path, Sink { content, out }))
    }

    pub(crate) fn write(&mut self, relative: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let (path, mut sink) = self.sink(relative, true)?;
        std::io::Write::write_all(&mut sink, bytes)
            .and_then(|()| sink.finish())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Creates a file to be written piece by piece; with a CSV header when given.
    pub(crate) fn create(
        &mut self,
        relative: &str,
        csv_header: Option<&[&'static str]>,
    ) -> anyhow::Result<Streamed> {
        let (path, sink) = self.sink(relative, true)?;
        let mut streamed = Streamed::new(path, sink, csv_header.is_some());
        if let Some(header) = csv_header {
            streamed.csv(header.iter().copied().map(Cell::Header).collect())?;
        }
        Ok(streamed)
    }

    /// Opens a file created before to add to its end.
    pub(crate) fn append(&mut self, relative: &str) -> anyhow::Result<Streamed> {
        let (path, sink) = self.sink(relative, false)?;
        Ok(Streamed::new(path, sink, relative.ends_with(".csv")))
    }

    pub(crate) fn csv<R>(
        &mut self,
        relative: &str,
        header: &[&str],
        rows: impl IntoIterator<Item = R>,
        cells: impl Fn(R) -> Vec<Cell>,
    ) -> anyhow::Result<()> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(header)?;
        for row in rows {
            let record: Vec<String> = cells(row).into_iter().map(Cell::render).collect();
            writer.write_record(&record)?;
        }
        let bytes = writer.into_inner().context("cannot finish a CSV")?;
        self.write(relative, &bytes)
    }

    pub(crate) fn jsonl<T: Serialize>(
        &mut self,
        relative: &str,
        rows: impl IntoIterator<Item = T>,
    ) -> anyhow::Result<()> {
        let mut bytes = Vec::new();
        for row in rows {
            serde_json::to_writer(&mut bytes, &row)?;
            bytes.push(b'\n');
        }
        self.write(relative, &bytes)
    }
}

/// The lines of a file of an export, decompressed when its name ends in `.gz` (every gzip
/// member, in order).
pub fn read_lines(
    folder: &std::path::Path,
    relative: &str,
) -> anyhow::Result<std::io::Lines<std::io::BufReader<Box<dyn std::io::Read>>>> {
    let file = std::fs::File::open(folder.join(relative))
        .with_context(|| format!("{relative}: missing"))?;
    let reader: Box<dyn std::io::Read> = if relative.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    Ok(std::io::BufRead::lines(std::io::BufReader::new(reader)))
}
