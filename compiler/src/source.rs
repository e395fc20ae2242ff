//! Source files and imports: reads a root file and every file it imports,
//! parsing each once, and remembers their texts for diagnostics.

use std::path::{Path, PathBuf};

use modelc_grammar::ast::{self, Span};

use crate::diag::{CheckError, Error, Located};

/// Index of a file in a [`Sources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId(pub usize);

/// One source file: its name as given, its text and its AST.
#[derive(Debug)]
pub struct SourceFile {
    pub name: String,
    pub path: PathBuf,
    pub text: String,
    pub ast: ast::File,
}

/// Every file of one compilation: the root first, then its imports in the
/// order they were first reached.
#[derive(Debug, Default)]
pub struct Sources {
    pub files: Vec<SourceFile>,
}

/// Reads files. The real one reads the file system; tests use a map.
pub trait Loader {
    fn load(&self, path: &Path) -> Result<String, String>;
}

/// Reads files from disk.
pub struct FsLoader;

impl Loader for FsLoader {
    fn load(&self, path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_string(),
            std::io::ErrorKind::InvalidData => "the file is not valid UTF-8".to_string(),
            _ => e.to_string(),
        })
    }
}

impl Sources {
    pub fn file(&self, id: FileId) -> &SourceFile {
        &self.files[id.0]
    }

    pub fn ids(&self) -> impl Iterator<Item = FileId> {
        (0..self.files.len()).map(FileId)
    }

    /// Parses `text` as the root file and follows its imports through
    /// `loader`. Returns every syntax and import error found on the way.
    pub fn load(name: &str, text: String, loader: &dyn Loader) -> (Sources, Vec<Located>) {
        let mut sources = Sources::default();
        let mut errors = Vec::new();
        let path = PathBuf::from(name);
        sources.add(name.to_string(), path, text, &mut errors);
        let mut next = 0;
        while next < sources.files.len() {
            let imports: Vec<(String, Span)> = sources.files[next]
                .ast
                .items
                .iter()
                .filter_map(|i| match i {
                    ast::Item::Import { path, span } => Some((path.clone(), *span)),
                    _ => None,
                })
                .collect();
            let dir = sources.files[next].path.parent().map(Path::to_path_buf).unwrap_or_default();
            for (rel, span) in imports {
                let target = dir.join(&rel);
                let same = |f: &SourceFile| f.path == target;
                if sources.files.iter().any(same) {
                    // Already loaded (a diamond or a cycle): each file is read once,
                    // and a cycle is harmless because imports only bring names.
                    continue;
                }
                match loader.load(&target) {
                    Ok(text) => {
                        let name = target.to_string_lossy().into_owned();
                        sources.add(name, target, text, &mut errors);
                    }
                    Err(reason) => errors.push(Located {
                        file: FileId(next),
                        error: Error::Check(CheckError::Import { path: rel.clone(), reason, span: span.into() }),
                    }),
                }
            }
            next += 1;
        }
        (sources, errors)
    }

    fn add(&mut self, name: String, path: PathBuf, text: String, errors: &mut Vec<Located>) {
        let id = FileId(self.files.len());
        let (ast, syntax) = modelc_grammar::parse(&text);
        errors.extend(syntax.into_iter().map(|e| Located { file: id, error: Error::Syntax(e) }));
        self.files.push(SourceFile { name, path, text, ast });
    }

    /// 1-based line number of a byte offset, for messages that cite a line.
    pub fn line_of(&self, file: FileId, offset: usize) -> usize {
        let text = &self.file(file).text;
        text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
    }
}
